//! Model-based test of protocol v3 (stream queues, `functions::v3`):
//! random sequences of operations and injected faults against a real
//! redis-server, with the protocol's invariants checked after every step.
//!
//! Operations: submit (coalesced, with duplicate ids inside a call and of
//! existing tasks, some past their deadline, up to the depth limit), read
//! new entries (`XREADGROUP`, COUNT = free slots, band by band), complete
//! (done, failed, retry, hand-back, expired; several per call, stale
//! attempts among them), beat (lease renewal), cancel, status, housekeeping
//! (`rtq3_takeover`), a worker restarted under the same id (`rtq3_join`).
//! Faults: a submit's or a complete's reply lost and the call retried, a
//! lease lapsed (the entry's idle time pushed past the lease), a worker
//! that froze and comes back to find its attempt taken over.
//!
//! Invariants (read from Redis after every step):
//! 1. every task the model submitted is either ended (its ending hash) and
//!    in no band, or has exactly one entry, the one its marker names;
//! 2. every pending-list entry is held by a worker that believes it runs
//!    that attempt (same entry, same delivery count), and no worker runs
//!    more attempts than its slots, stale ones included;
//! 3. attempts used never pass the task's limit (a0 + deliveries <= max
//!    while running; the ending's attempt <= max);
//! 4. every ended task produced exactly one final reply event, a live one
//!    none;
//! 5. the queue's depth counter equals the entries in its bands;
//! 6. status agrees with where the task is.
//!
//! `RTQ_MODEL_SEED` replays a run (the seed is printed on failure),
//! `RTQ_MODEL_STEPS` sets its length (default 2000).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use support::rng::{env_number, Rng};

use redis::aio::MultiplexedConnection;
use redis::Value;
use rtq_core::functions::v3::{
    self, Admission, Cancelled, ChunkWrite, Completed, Delivery, EndState, Ending, Held, Marker,
    NewTask, Status, Written,
};
use rtq_core::keys::QueueKeys;
use rtq_core::protocol::{ReplyEvent, TaskState};
use support::RedisServer;

const BANDS: u8 = 3;
const MAX_DEPTH: u64 = 14;
/// Housekeeping's lease: only entries the test aged on purpose lapse.
const LEASE_MS: u64 = 600_000;
/// Idle time a lapse gives an entry.
const AGED_MS: u64 = 10_000_000;

struct SimWorker {
    id: String,
    slots: usize,
    /// Attempts this worker believes it runs, by task id.
    running: BTreeMap<String, Held>,
    /// Chunks each running attempt wrote (and Redis acknowledged).
    written: BTreeMap<String, u64>,
}

#[derive(Default, Debug)]
struct TaskModel {
    max: u64,
    /// Deadline already passed at submit.
    expired: bool,
    /// Hand-outs (reads and take-overs) and hand-backs seen.
    handouts: u64,
    handbacks: u64,
}

/// A stream entry as XRANGE returns it: id and (field, value) pairs.
type EntryRow<K> = (String, Vec<(K, Vec<u8>)>);

/// One pending-list row: (band, entry) -> (consumer, deliveries).
type Pel = BTreeMap<(u8, String), (String, u64)>;

/// What Redis holds, read after every step.
struct Snapshot {
    /// Task id -> (band, entry, a0) of its entry.
    entries: BTreeMap<String, (u8, String, u64)>,
    pel: Pel,
    /// Task id -> (state, attempt) of its ending.
    endings: HashMap<String, (String, u64)>,
    /// Task id -> (band, entry) its marker names while it lives.
    markers: HashMap<String, (u8, String)>,
    depth: i64,
}

struct Sim {
    conn: MultiplexedConnection,
    keys: QueueKeys,
    rng: Rng,
    seed: u64,
    step: usize,
    reply: String,
    workers: Vec<SimWorker>,
    tasks: BTreeMap<String, TaskModel>,
    next_task: usize,
    log: Vec<String>,
    finals: HashMap<String, u32>,
    last_event: String,
    /// Counts of interesting things done, printed at the end:
    /// completes Ok, replays, stale completes, take-overs, restarts with
    /// attempts held, cancels of running tasks, expired at pick-up or by
    /// housekeeping, FULL answers.
    seen: BTreeMap<&'static str, usize>,
}

impl Sim {
    fn note(&mut self, what: String) {
        self.log.push(format!("#{} {what}", self.step));
        if self.log.len() > 40 {
            self.log.remove(0);
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.seen.entry(what).or_default() += 1;
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "v3 model invariant broken at step {} (replay with RTQ_MODEL_SEED={}): {what}\nlast operations:\n{}",
            self.step,
            self.seed,
            self.log.join("\n")
        );
    }

    async fn snapshot(&mut self) -> Snapshot {
        let mut entries = BTreeMap::new();
        let mut pel = Pel::new();
        for band in 0..BANDS {
            let key = v3::band_key(&self.keys, band);
            let rows: Vec<EntryRow<String>> = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(&mut self.conn)
                .await
                .unwrap();
            for (entry, fields) in rows {
                let get = |k: &str| {
                    fields
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let id = get("t");
                let a0 = get("a0").parse().unwrap_or(u64::MAX);
                if let Some(old) = entries.insert(id.clone(), (band, entry.clone(), a0)) {
                    self.fail(format!("task {id} has two entries: {old:?} and {entry}"));
                }
            }
            let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(&key)
                .arg(v3::GROUP)
                .arg("-")
                .arg("+")
                .arg(10_000)
                .query_async(&mut self.conn)
                .await
                .unwrap();
            for (entry, consumer, _idle, deliveries) in rows {
                pel.insert((band, entry), (consumer, deliveries));
            }
        }
        let mut endings = HashMap::new();
        let mut markers = HashMap::new();
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.get(v3::marker_key(&self.keys, id));
        }
        let values: Vec<Option<Vec<u8>>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn).await.unwrap()
        };
        for (id, value) in ids.into_iter().zip(values) {
            let Some(value) = value else { continue };
            match Marker::parse(&value) {
                Some(Marker::Ended { state, attempt, .. }) => {
                    endings.insert(id.clone(), (state, attempt));
                }
                Some(Marker::Place { band, entry, .. }) => {
                    markers.insert(id.clone(), (band, entry));
                }
                None => self.fail(format!("{id}'s marker is unreadable: {value:?}")),
            }
        }
        let depth: Option<i64> = redis::cmd("HGET")
            .arg(self.keys.meta())
            .arg("n")
            .query_async(&mut self.conn)
            .await
            .unwrap();
        Snapshot {
            entries,
            pel,
            endings,
            markers,
            depth: depth.unwrap_or(0),
        }
    }

    async fn read_finals(&mut self) {
        let rows: Vec<EntryRow<Vec<u8>>> = redis::cmd("XRANGE")
            .arg(&self.reply)
            .arg(format!("({}", self.last_event))
            .arg("+")
            .query_async(&mut self.conn)
            .await
            .unwrap();
        for (entry, fields) in rows {
            self.last_event = entry;
            if fields.iter().any(|(k, _)| k == b"hello") {
                continue;
            }
            match ReplyEvent::decode(&fields) {
                Ok(ReplyEvent::Final { id, .. }) => *self.finals.entry(id).or_default() += 1,
                Ok(_) => {}
                Err(e) => self.fail(format!("unreadable reply event: {e}")),
            }
        }
    }

    async fn check(&mut self) {
        let snap = self.snapshot().await;
        self.read_finals().await;
        // 1. ended xor exactly one entry, where the marker says.
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in &ids {
            let marker = snap.markers.get(id);
            let ended = snap.endings.get(id);
            let entry = snap.entries.get(id);
            match (ended, entry) {
                (Some(h), Some(e)) => self.fail(format!("{id} ended ({h:?}) but still has {e:?}")),
                (None, None) => self.fail(format!("{id} is lost: no ending and no entry")),
                (None, Some((band, entry, _))) => {
                    if marker != Some(&(*band, entry.clone())) {
                        self.fail(format!(
                            "{id}'s marker {marker:?} does not name {band} {entry}"
                        ));
                    }
                }
                (Some(_), None) => {}
            }
            // 4. one final event per ended task.
            let finals = self.finals.get(id).copied().unwrap_or(0);
            let want = u32::from(ended.is_some());
            if finals != want {
                self.fail(format!("{id}: {finals} final events, ended={}", want == 1));
            }
            // 3. attempts within the limit.
            let max = self.tasks[id].max;
            if let Some((state, a)) = ended {
                if *a > max {
                    self.fail(format!("{id} ended {state} at attempt {a} of {max}"));
                }
            }
            if let Some((band, entry, a0)) = entry {
                if let Some((_, d)) = snap.pel.get(&(*band, entry.clone())) {
                    if a0 + d > max {
                        self.fail(format!("{id} runs attempt {} of {max}", a0 + d));
                    }
                }
                if *a0 > max {
                    self.fail(format!("{id} queued with {a0} attempts used of {max}"));
                }
            }
            let t = &self.tasks[id];
            if t.handouts > t.handbacks + max {
                self.fail(format!(
                    "{id} handed out {} times with {} hand-backs, max {max}",
                    t.handouts, t.handbacks
                ));
            }
        }
        for id in snap.entries.keys() {
            if !self.tasks.contains_key(id) {
                self.fail(format!("an entry of unknown task {id}"));
            }
        }
        // 2. the pending list is exactly what workers believe they hold.
        for ((band, entry), (consumer, d)) in &snap.pel {
            let Some(w) = self.workers.iter().find(|w| &w.id == consumer) else {
                self.fail(format!("{entry} held by unknown consumer {consumer}"));
            };
            let believed = w
                .running
                .values()
                .any(|h| h.band == *band && &h.entry == entry && h.deliveries == *d);
            if !believed {
                self.fail(format!(
                    "{consumer} holds {band}/{entry} (delivery {d}) but does not run it: {:?}",
                    w.running
                ));
            }
        }
        for w in &self.workers {
            if w.running.len() > w.slots {
                self.fail(format!(
                    "{} runs {} attempts in {} slots",
                    w.id,
                    w.running.len(),
                    w.slots
                ));
            }
        }
        // 6. a current attempt's stored output is exactly what it wrote.
        let mut current = Vec::new();
        for w in &self.workers {
            for (id, h) in &w.running {
                if snap.pel.get(&(h.band, h.entry.clone())) == Some(&(w.id.clone(), h.deliveries)) {
                    current.push((id.clone(), h.attempt(), w.written[id]));
                }
            }
        }
        for (id, attempt, written) in current {
            let stored = self.output(&id, attempt).await;
            let expect: Vec<Vec<u8>> = (0..written)
                .map(|seq| chunk_text(&id, attempt, seq))
                .collect();
            if stored != expect {
                self.fail(format!(
                    "{id} attempt {attempt} stores {} chunks, wrote {written}",
                    stored.len()
                ));
            }
        }
        // 5. the depth counter.
        if snap.depth != snap.entries.len() as i64 {
            self.fail(format!(
                "depth counter {} with {} entries",
                snap.depth,
                snap.entries.len()
            ));
        }
    }

    fn free(&self, w: usize) -> usize {
        self.workers[w].slots - self.workers[w].running.len()
    }

    async fn submit(&mut self) {
        let n = 1 + self.rng.below(4);
        let mut tasks = Vec::new();
        for _ in 0..n {
            let id = if !tasks.is_empty() && self.rng.percent(10) {
                let t: &NewTask = &tasks[self.rng.below(tasks.len())];
                t.id.clone()
            } else if self.next_task > 0 && self.rng.percent(10) {
                format!("t{}", 1 + self.rng.below(self.next_task))
            } else {
                self.next_task += 1;
                format!("t{}", self.next_task)
            };
            let expired = self.rng.percent(8);
            tasks.push(NewTask {
                id,
                band: self.rng.below(usize::from(BANDS)) as u8,
                spec: b"{}".to_vec(),
                reply: self.reply.clone(),
                deadline_ms: if expired { 1 } else { 0 },
                max_attempts: 1 + self.rng.below(3) as u32,
                retention_ms: 3_600_000,
            });
        }
        let before = self.snapshot().await;
        let out = v3::submit(&mut self.conn, &self.keys, &tasks)
            .await
            .unwrap();
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        self.note(format!("submit {ids:?} -> {out:?}"));
        let mut live = before.entries.len() as u64;
        let mut seen = BTreeSet::new();
        for (t, a) in tasks.iter().zip(&out) {
            let exists = self.tasks.contains_key(&t.id) || seen.contains(&t.id);
            let want_full = !exists && live >= MAX_DEPTH;
            let ok = match a {
                Admission::Duplicate => exists,
                Admission::Full => want_full,
                Admission::Added { .. } => !exists && !want_full,
            };
            if !ok {
                self.fail(format!(
                    "submit of {} answered {a:?} (exists {exists}, live {live})",
                    t.id
                ));
            }
            if let Admission::Added { .. } = a {
                seen.insert(t.id.clone());
                live += 1;
                self.tasks.insert(
                    t.id.clone(),
                    TaskModel {
                        max: u64::from(t.max_attempts),
                        expired: t.deadline_ms == 1,
                        ..Default::default()
                    },
                );
            }
            if *a == Admission::Full {
                self.count("full");
            }
        }
        if self.rng.percent(20) {
            // The reply was lost: the same call again adds nothing.
            let again = v3::submit(&mut self.conn, &self.keys, &tasks)
                .await
                .unwrap();
            self.note(format!("submit again -> {again:?}"));
            for (first, second) in out.iter().zip(&again) {
                let ok = match first {
                    Admission::Added { .. } | Admission::Duplicate => {
                        *second == Admission::Duplicate
                    }
                    Admission::Full => *second == Admission::Full,
                };
                if !ok {
                    self.fail(format!(
                        "a repeated submit answered {second:?} after {first:?}"
                    ));
                }
            }
        }
    }

    fn take(&mut self, w: usize, deliveries: Vec<Delivery>, how: &str) {
        for d in deliveries {
            if self.workers[w].running.len() >= self.workers[w].slots {
                self.fail(format!(
                    "{} got {} past its slots ({how})",
                    self.workers[w].id, d.id
                ));
            }
            let Some(t) = self.tasks.get_mut(&d.id) else {
                self.fail(format!("{how} handed out unknown task {}", d.id));
            };
            t.handouts += 1;
            let max = t.max;
            if d.held.attempt() > max {
                self.fail(format!(
                    "{how} handed out {} at attempt {} of {max}",
                    d.id,
                    d.held.attempt()
                ));
            }
            let id = self.workers[w].id.clone();
            self.note(format!(
                "{id} {how} {} attempt {} ({:?})",
                d.id,
                d.held.attempt(),
                d.held
            ));
            self.workers[w].written.insert(d.id.clone(), 0);
            if let Some(old) = self.workers[w].running.insert(d.id.clone(), d.held) {
                // Its own stale attempt of the same task: the new one replaces it.
                self.note(format!("{id} replaced its stale attempt {old:?}"));
            }
        }
    }

    async fn read(&mut self, w: usize) {
        let free = self.free(w);
        let id = self.workers[w].id.clone();
        for band in 0..BANDS {
            let free = self.free(w);
            if free == 0 {
                break;
            }
            let got = v3::read_new(&mut self.conn, &self.keys, &id, band, free, None)
                .await
                .unwrap();
            self.take(w, got, "read");
        }
        let _ = free;
    }

    async fn complete(&mut self, w: usize) {
        if self.workers[w].running.is_empty() {
            return;
        }
        let snap = self.snapshot().await;
        let wid = self.workers[w].id.clone();
        let mut endings = Vec::new();
        let mut want = Vec::new();
        let running: Vec<(String, Held)> = self.workers[w]
            .running
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, held) in running {
            if !self.rng.percent(60) && !endings.is_empty() {
                continue;
            }
            let t = &self.tasks[&id];
            let state = if t.expired {
                EndState::Expired("deadline passed before the start".into())
            } else {
                match self.rng.below(10) {
                    0..=3 => EndState::Done(format!("{{\"by\":\"{wid}\"}}")),
                    4 => EndState::Failed("bad input".into()),
                    5..=7 => EndState::Retry("flaky".into()),
                    _ => EndState::HandBack("not now".into()),
                }
            };
            let current = snap.pel.get(&(held.band, held.entry.clone()))
                == Some(&(wid.clone(), held.deliveries));
            // The output count the ending asks for: right, wrong (a tail
            // write that did not land), or not checked.
            let written = self.workers[w].written.get(&id).copied().unwrap_or(0);
            let output = match self.rng.below(10) {
                0..=2 => Some(written),
                3 => Some(written + 1 + self.rng.below(3) as u64),
                _ => None,
            };
            want.push(match (current, output) {
                (false, _) => Completed::Lost,
                (true, Some(o)) if o != written => Completed::Order(written),
                (true, _) => Completed::Ok,
            });
            endings.push(Ending {
                held,
                id,
                state,
                output,
            });
        }
        let written_before = self.workers[w].written.clone();
        if self.rng.percent(15) {
            // The same ending twice in one call: the second replays.
            let again = endings[0].clone();
            want.push(match want[0] {
                Completed::Ok => Completed::Replay,
                other => other,
            });
            endings.push(again);
            self.count("repeat within a call");
        }
        let out = v3::complete(&mut self.conn, &self.keys, &wid, &endings)
            .await
            .unwrap();
        self.note(format!(
            "{wid} complete {:?} -> {out:?}",
            endings
                .iter()
                .map(|e| (&e.id, &e.state))
                .collect::<Vec<_>>()
        ));
        if out != want {
            self.fail(format!("complete answered {out:?}, expected {want:?}"));
        }
        for (e, o) in endings.iter().zip(&out) {
            if let Completed::Order(_) = o {
                // Nothing written: the attempt still runs.
                self.count("complete refused for its output count");
                continue;
            }
            self.workers[w].running.remove(&e.id);
            match o {
                Completed::Ok => {
                    self.count("complete ok");
                    if let EndState::HandBack(_) = e.state {
                        self.tasks.get_mut(&e.id).unwrap().handbacks += 1;
                    }
                    if let EndState::Expired(_) = e.state {
                        self.count("expired at pick-up");
                    }
                }
                _ => self.count("stale complete"),
            }
        }
        let after = self.snapshot().await;
        for (e, o) in endings.iter().zip(&out) {
            if *o != Completed::Ok {
                continue;
            }
            let ending = after.endings.get(&e.id).map(|(st, _)| st.clone());
            let requeued = after.entries.get(&e.id).map(|(_, _, a0)| *a0);
            let attempt = e.held.attempt();
            let max = self.tasks[&e.id].max;
            let stored = self.output(&e.id, attempt).await.len() as u64;
            let ended_state = matches!(
                e.state,
                EndState::Done(_) | EndState::Failed(_) | EndState::Expired(_)
            ) || (matches!(e.state, EndState::Retry(_)) && attempt >= max);
            let written = written_before.get(&e.id).copied().unwrap_or(0);
            let want_stored = if ended_state { written } else { 0 };
            if stored != want_stored {
                self.fail(format!(
                    "{} after {:?}: {stored} chunks kept, expected {want_stored}",
                    e.id, e.state
                ));
            }
            let ok = match &e.state {
                EndState::Done(_) => ending.as_deref() == Some("done"),
                EndState::Failed(_) => ending.as_deref() == Some("failed"),
                EndState::Expired(_) => ending.as_deref() == Some("expired"),
                EndState::Retry(_) if attempt >= max => ending.as_deref() == Some("failed"),
                EndState::Retry(_) => requeued == Some(attempt),
                EndState::HandBack(_) => requeued == Some(attempt - 1),
            };
            if !ok {
                self.fail(format!(
                    "{} after {:?} at attempt {attempt} of {max}: ending {ending:?}, requeued with a0 {requeued:?}",
                    e.id, e.state
                ));
            }
        }
        if self.rng.percent(20) {
            // The reply was lost: the same call again writes nothing.
            let again = v3::complete(&mut self.conn, &self.keys, &wid, &endings)
                .await
                .unwrap();
            self.note(format!("{wid} complete again -> {again:?}"));
            for (first, second) in out.iter().zip(&again) {
                let want = match first {
                    Completed::Ok | Completed::Replay => Completed::Replay,
                    other => *other,
                };
                if *second != want {
                    self.fail(format!(
                        "a repeated complete answered {again:?} after {out:?}"
                    ));
                }
            }
            self.count("replayed call");
        }
    }

    /// The stored output of attempt `attempt` of task `id`.
    async fn output(&mut self, id: &str, attempt: u64) -> Vec<Vec<u8>> {
        redis::cmd("LRANGE")
            .arg(v3::output_key(&self.keys, id, attempt))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    /// A worker writes chunks of its running attempts (one or two in one
    /// call), sometimes from a wrong place or repeated after a lost reply.
    async fn write(&mut self, w: usize) {
        if self.workers[w].running.is_empty() {
            return;
        }
        let snap = self.snapshot().await;
        let wid = self.workers[w].id.clone();
        let running: Vec<(String, Held)> = self.workers[w]
            .running
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut writes = Vec::new();
        let mut want = Vec::new();
        for (id, held) in running {
            if !writes.is_empty() && !self.rng.percent(40) {
                continue;
            }
            let have = self.workers[w].written[&id];
            let wrong_place = self.rng.percent(10);
            let seq0 = if wrong_place { have + 1 } else { have };
            let n = 1 + self.rng.below(3) as u64;
            let attempt = held.attempt();
            let current = snap.pel.get(&(held.band, held.entry.clone()))
                == Some(&(wid.clone(), held.deliveries));
            want.push(match (current, wrong_place) {
                (false, _) => Written::Lost,
                (true, true) => Written::Order(have),
                (true, false) => Written::Ok(have + n),
            });
            writes.push(ChunkWrite {
                chunks: (seq0..seq0 + n)
                    .map(|seq| chunk_text(&id, attempt, seq))
                    .collect(),
                held,
                id,
                seq0,
            });
        }
        let out = v3::write(&mut self.conn, &self.keys, &wid, &writes)
            .await
            .unwrap();
        self.note(format!(
            "{wid} write {:?} -> {out:?}",
            writes
                .iter()
                .map(|x| (&x.id, x.seq0, x.chunks.len()))
                .collect::<Vec<_>>()
        ));
        if out != want {
            self.fail(format!("write answered {out:?}, expected {want:?}"));
        }
        for (x, o) in writes.iter().zip(&out) {
            match o {
                Written::Ok(n) => {
                    self.workers[w].written.insert(x.id.clone(), *n);
                    self.count("chunks written");
                }
                Written::Lost => {
                    self.workers[w].running.remove(&x.id);
                }
                _ => self.count("chunks out of order"),
            }
        }
        if self.rng.percent(20) {
            // The reply was lost: the same call again writes nothing.
            let again = v3::write(&mut self.conn, &self.keys, &wid, &writes)
                .await
                .unwrap();
            self.note(format!("{wid} write again -> {again:?}"));
            for (first, second) in out.iter().zip(&again) {
                let ok = match first {
                    Written::Ok(n) => *second == Written::Order(*n),
                    other => second == other,
                };
                if !ok {
                    self.fail(format!("a repeated write answered {again:?} after {out:?}"));
                }
            }
            self.count("write replayed");
        }
    }

    async fn beat(&mut self, w: usize) {
        let wid = self.workers[w].id.clone();
        let held: Vec<(String, Held)> = self.workers[w]
            .running
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let snap = self.snapshot().await;
        let list: Vec<Held> = held.iter().map(|(_, h)| h.clone()).collect();
        let out = v3::beat(&mut self.conn, &self.keys, &wid, 5_000, &list)
            .await
            .unwrap();
        self.note(format!("{wid} beat {} -> {out:?}", list.len()));
        for ((id, h), ok) in held.iter().zip(out) {
            let current =
                snap.pel.get(&(h.band, h.entry.clone())) == Some(&(wid.clone(), h.deliveries));
            if ok != current {
                self.fail(format!("beat of {id} answered {ok}, current {current}"));
            }
            if !ok {
                self.workers[w].running.remove(id);
                self.count("stale beat");
            }
        }
    }

    /// A lapsed lease: the entry looks idle for hours (its worker froze).
    async fn lapse(&mut self, w: usize) {
        let Some((id, h)) = self.workers[w]
            .running
            .iter()
            .nth(self.rng.below(self.workers[w].running.len().max(1)))
            .map(|(k, v)| (k.clone(), v.clone()))
        else {
            return;
        };
        let wid = self.workers[w].id.clone();
        // Only its current attempt (a stale one is held by another worker).
        let snap = self.snapshot().await;
        if snap.pel.get(&(h.band, h.entry.clone())) != Some(&(wid.clone(), h.deliveries)) {
            return;
        }
        let _: Value = redis::cmd("XCLAIM")
            .arg(v3::band_key(&self.keys, h.band))
            .arg(v3::GROUP)
            .arg(&wid)
            .arg(0)
            .arg(&h.entry)
            .arg("IDLE")
            .arg(AGED_MS)
            .arg("JUSTID")
            .query_async(&mut self.conn)
            .await
            .unwrap();
        self.note(format!("{wid}'s lease of {id} lapses"));
    }

    async fn takeover(&mut self, w: usize) {
        let wid = self.workers[w].id.clone();
        let free = self.free(w);
        let (ended, got) = v3::takeover(&mut self.conn, &self.keys, &wid, LEASE_MS, free)
            .await
            .unwrap();
        self.note(format!(
            "{wid} takeover (free {free}) -> ended {ended}, took {}",
            got.len()
        ));
        if got.len() > free {
            self.fail(format!(
                "takeover gave {} entries for {free} free slots",
                got.len()
            ));
        }
        for d in &got {
            if d.held.deliveries < 2 {
                self.fail(format!(
                    "a take-over of {} at delivery {}",
                    d.id, d.held.deliveries
                ));
            }
            // The frozen worker's attempt is stale now (it may be this one).
            let uncounted = self.workers.iter().any(|other| {
                other
                    .running
                    .get(&d.id)
                    .is_some_and(|h| h.entry == d.held.entry && h.deliveries >= d.held.deliveries)
            });
            if uncounted {
                self.fail(format!("a take-over of {} did not count a delivery", d.id));
            }
            if self.workers[w].running.contains_key(&d.id) {
                // Its own frozen attempt: the worker drops it for the new one.
                self.workers[w].running.remove(&d.id);
            }
            self.count("taken over");
        }
        self.take(w, got, "takeover");
        if ended > 0 {
            self.count("ended by housekeeping");
        }
        // The deadline set keeps only tasks still running (every deadline
        // here has passed; fewer than 100 at once).
        let due: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{}dl", self.keys.prefix()))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        let snap_now = self.snapshot().await;
        if due.len() < 100 {
            for id in &due {
                let held = snap_now
                    .entries
                    .get(id)
                    .is_some_and(|(b, e, _)| snap_now.pel.contains_key(&(*b, e.clone())));
                if !held {
                    self.fail(format!("{id} stays in the deadline set after housekeeping"));
                }
            }
        }
        // Queued entries past their deadline are gone from the head.
        let snap = self.snapshot().await;
        for (id, (band, entry, _)) in &snap.entries {
            if self.tasks[id].expired && !snap.pel.contains_key(&(*band, entry.clone())) {
                let queued_in_band = snap
                    .entries
                    .values()
                    .filter(|(b, e, _)| {
                        b == band
                            && order(e) < order(entry)
                            && !snap.pel.contains_key(&(*b, e.clone()))
                    })
                    .count();
                if queued_in_band < 100 {
                    self.fail(format!(
                        "{id} is queued past its deadline after housekeeping"
                    ));
                }
            }
        }
    }

    async fn restart(&mut self, w: usize) {
        let wid = self.workers[w].id.clone();
        let snap = self.snapshot().await;
        let held = snap.pel.values().filter(|(c, _)| *c == wid).count() as u64;
        self.workers[w].running.clear();
        let n = v3::join(&mut self.conn, &self.keys, &wid).await.unwrap();
        self.note(format!("{wid} restarts holding {n}"));
        if n != held {
            self.fail(format!("join of {wid} answered {n}, it held {held}"));
        }
        if n > 0 {
            self.count("restart holding attempts");
        }
    }

    fn pick_task(&mut self) -> Option<String> {
        if self.tasks.is_empty() {
            return None;
        }
        let i = self.rng.below(self.tasks.len());
        self.tasks.keys().nth(i).cloned()
    }

    async fn cancel(&mut self) {
        let Some(id) = self.pick_task() else {
            return;
        };
        let snap = self.snapshot().await;
        let out = v3::cancel(&mut self.conn, &self.keys, &id, "user asked")
            .await
            .unwrap();
        self.note(format!("cancel {id} -> {out:?}"));
        let want = if let Some((st, _)) = snap.endings.get(&id) {
            Cancelled::Ended(TaskState::parse(st).unwrap())
        } else {
            let (band, entry, _) = &snap.entries[&id];
            Cancelled::Ok(
                snap.pel
                    .get(&(*band, entry.clone()))
                    .map(|(c, _)| c.clone()),
            )
        };
        if out != want {
            self.fail(format!(
                "cancel of {id} answered {out:?}, expected {want:?}"
            ));
        }
        if let Cancelled::Ok(Some(holder)) = &out {
            self.count("cancel running");
            // The holder's stop order names the attempt.
            let w = self.workers.iter().position(|w| &w.id == holder).unwrap();
            let order: Option<String> = redis::cmd("LPOP")
                .arg(self.keys.inbox(holder))
                .query_async(&mut self.conn)
                .await
                .unwrap();
            let attempt = self.workers[w].running[&id].attempt();
            let expect = format!("C\t{id}\t{attempt}\tcancelled\tuser asked");
            if order.as_deref() != Some(expect.as_str()) {
                self.fail(format!("stop order {order:?}, expected {expect:?}"));
            }
            // The worker stops it; its slot frees when it learns (beat or complete: LOST).
        }
    }

    async fn status(&mut self) {
        let Some(id) = self.pick_task() else {
            return;
        };
        let snap = self.snapshot().await;
        let st = v3::status(&mut self.conn, &self.keys, &id).await.unwrap();
        let ok = match &st {
            Status::Ended { state, attempt, .. } => snap
                .endings
                .get(&id)
                .is_some_and(|(st, a)| st == state.as_str() && a == attempt),
            Status::Running {
                worker, attempt, ..
            } => snap.entries.get(&id).is_some_and(|(b, e, a0)| {
                snap.pel
                    .get(&(*b, e.clone()))
                    .is_some_and(|(c, d)| c == worker && a0 + d == *attempt)
            }),
            Status::Queued { band, ahead, .. } => snap.entries.get(&id).is_some_and(|(b, e, _)| {
                let queued = |bb: &u8, ee: &String| !snap.pel.contains_key(&(*bb, ee.clone()));
                let expect = snap
                    .entries
                    .values()
                    .filter(|(bb, ee, _)| {
                        queued(bb, ee) && (bb < b || (bb == b && order(ee) < order(e)))
                    })
                    .count() as u64;
                b == band && queued(b, e) && *ahead == expect
            }),
            Status::Unknown => false,
        };
        if !ok {
            self.fail(format!(
                "status of {id}: {st:?}; entries {:?}; pending {:?}",
                snap.entries, snap.pel
            ));
        }
    }

    async fn step_once(&mut self) {
        let w = self.rng.below(self.workers.len());
        match self.rng.below(100) {
            0..=19 => self.submit().await,
            20..=34 => self.read(w).await,
            35..=44 => self.write(w).await,
            45..=59 => self.complete(w).await,
            60..=66 => self.beat(w).await,
            67..=72 => self.lapse(w).await,
            73..=80 => self.takeover(w).await,
            81..=83 => self.restart(w).await,
            84..=90 => self.cancel().await,
            _ => self.status().await,
        }
    }
}

async fn run_model(seed: u64, steps: usize) {
    let redis = RedisServer::start();
    let mut conn = support::patient_conn(&redis.url()).await;
    let keys = QueueKeys::new("mv3").unwrap();
    v3::load(&mut conn).await.unwrap();
    v3::create(&mut conn, &keys, BANDS, MAX_DEPTH)
        .await
        .unwrap();
    let reply = keys.reply("c1");
    // The client's reply stream exists before its tasks (NOMKSTREAM).
    let _: String = redis::cmd("XADD")
        .arg(&reply)
        .arg("*")
        .arg("hello")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut sim = Sim {
        conn,
        keys,
        rng: Rng(seed),
        seed,
        step: 0,
        reply,
        workers: [1usize, 2, 3]
            .iter()
            .enumerate()
            .map(|(i, slots)| SimWorker {
                id: format!("w{i}"),
                slots: *slots,
                running: BTreeMap::new(),
                written: BTreeMap::new(),
            })
            .collect(),
        tasks: BTreeMap::new(),
        next_task: 0,
        log: Vec::new(),
        finals: HashMap::new(),
        last_event: "0-0".into(),
        seen: BTreeMap::new(),
    };
    for step in 0..steps {
        sim.step = step;
        sim.step_once().await;
        sim.check().await;
    }
    println!(
        "v3 model seed {seed}: {steps} steps, {} tasks, {} ended; {:?}",
        sim.next_task,
        sim.finals.len(),
        sim.seen
    );
    if steps >= 1000 {
        for what in [
            "complete ok",
            "replayed call",
            "stale complete",
            "taken over",
            "restart holding attempts",
            "cancel running",
            "expired at pick-up",
            "full",
            "repeat within a call",
            "chunks written",
            "chunks out of order",
            "write replayed",
        ] {
            assert!(
                sim.seen.get(what).copied().unwrap_or(0) > 0,
                "a run of {steps} steps must see '{what}' to mean anything: {:?}",
                sim.seen
            );
        }
    }
}

fn chunk_text(id: &str, attempt: u64, seq: u64) -> Vec<u8> {
    format!("{id}:{attempt}:{seq}").into_bytes()
}

/// A stream entry id in stream order.
fn order(entry: &str) -> (u64, u64) {
    let (ms, seq) = entry.split_once('-').unwrap_or((entry, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[tokio::test]
async fn random_operations_and_faults_keep_every_v3_invariant() {
    let seed = support::rng::seed();
    let steps = env_number("RTQ_MODEL_STEPS").unwrap_or(2000) as usize;
    println!("v3 model seed {seed} (RTQ_MODEL_SEED={seed} replays this run)");
    run_model(seed, steps).await;
}
