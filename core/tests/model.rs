//! Model-based test of the protocol: random sequences of operations and
//! injected faults against a real redis-server, with the protocol's
//! invariants checked after every step.
//!
//! Operations: submit, deliver (pop an inbox message), chunk, complete
//! (done, failed, retryable; alone or several in one `rtq2_complete_many`
//! call, with repeated and foreign completions), heartbeat, cancel, operator requeue,
//! housekeeping, worker restart under the same id, graceful leave, intake
//! on/off. Faults: a reply lost and the call retried (submit, chunk,
//! complete, a batch of completes), a delivery repeated or lost, a lease lapsed, a delivery aged
//! past the lease, a deadline passed, a retry's backoff passed.
//!
//! Invariants (read from Redis after every step):
//! 1. every queued task is in exactly one of pending/delayed and owned by
//!    nobody; every running task is owned by exactly its worker; an ended
//!    task is queued nowhere and owned at most by its last worker (until
//!    that worker's complete releases it);
//! 2. for every registered worker, free + owned <= slots; and no simulated
//!    worker ever runs more than its slots;
//! 3. after housekeeping, no pending task waits while a live worker has a
//!    free slot (unless that worker is the one a retry avoids);
//! 4. fails <= max attempts, and hand-outs <= (operator requeues + 1) x
//!    max attempts + hand-backs of unstarted deliveries: no task loops;
//! 5. every ending of a task produced exactly one final event;
//! 6. the stored output of a task's current attempt is exactly the chunks
//!    that attempt wrote, in order, none repeated or skipped.
//!
//! `RTQ_MODEL_SEED` replays a run (the seed is printed on failure),
//! `RTQ_MODEL_STEPS` sets its length (default 3000).

mod support;

use std::collections::{BTreeMap, HashMap};
use support::rng::{env_number, Rng};

use rtq_core::functions::chunk::{ChunkReply, WriteStatus};
use rtq_core::functions::complete::{CompleteOutcome, CompleteReply, SlotWriteReply};
use rtq_core::functions::heartbeat::{BeatReply, StopWhy};
use rtq_core::functions::release::{HandBack, ReleaseMode, ReleaseReply};
use rtq_core::functions::requeue::RequeueReply;
use rtq_core::functions::submit::SubmitReply;
use rtq_core::protocol::{InboxMessage, ReplyEvent, TaskState};
use support::proto::{Ending, Proto, RedisServer, Task, Write};

/// An attempt a simulated worker runs.
#[derive(Clone, Debug, Default)]
struct Attempt {
    written: u64,
    /// Told to stop: `true` = complete it to release the slot (cancelled or
    /// expired in Redis); `false` = just forget it (requeued, reassigned).
    stop: Option<bool>,
}

struct SimWorker {
    id: String,
    instance: String,
    slots: usize,
    accepting: bool,
    running: BTreeMap<(String, u64), Attempt>,
}

#[derive(Default)]
struct TaskModel {
    max: u32,
    operator_requeues: u32,
    requeued_after_end: u32,
    unstarted_handbacks: u32,
}

struct Sim {
    p: Proto,
    rng: Rng,
    seed: u64,
    step: usize,
    reply: String,
    workers: Vec<SimWorker>,
    tasks: BTreeMap<String, TaskModel>,
    next_task: usize,
    next_instance: usize,
    log: Vec<String>,
    /// Final events seen so far per task, and the last event read.
    finals: HashMap<String, u32>,
    last_event: String,
    /// Completion batches sent: calls, completions, foreign completions,
    /// repeats within a call, whole calls replayed, calls sent as
    /// `rtq2_write_many`, chunk writes in them.
    batches: [usize; 7],
}

/// A task hash as read with HGETALL.
type TaskHash = HashMap<String, String>;

/// Tasks tracked at once; older ended tasks are retired beyond this (the
/// checks read every tracked task after every step).
const TRACKED: usize = 40;

/// A completion of a batch: (task id, attempt), seq0, outcome, want next.
type CompletionItem = ((String, u64), u64, CompleteOutcome, bool);

/// A chunk write of a batch and its answer: ((task id, attempt), seq0, n).
type ChunkWrite = (((String, u64), u64, u64), ChunkReply);

/// One group of a `rtq2_write_many` call.
#[derive(Debug)]
enum Group {
    /// A chunk write: (task id, attempt), seq0, chunk count.
    Chunks((String, u64), u64, u64),
    /// The completion of item `i`.
    End(usize),
}

fn chunk_text(id: &str, attempt: u64, seq: u64) -> Vec<u8> {
    format!("{id}:{attempt}:{seq}").into_bytes()
}

impl Sim {
    fn note(&mut self, what: String) {
        self.log.push(format!("#{} {what}", self.step));
        if self.log.len() > 40 {
            self.log.remove(0);
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "model invariant broken at step {} (replay with RTQ_MODEL_SEED={}): {what}\nlast operations:\n{}",
            self.step,
            self.seed,
            self.log.join("\n")
        );
    }

    fn new_instance(&mut self) -> String {
        self.next_instance += 1;
        format!("inst{}", self.next_instance)
    }

    /// Several submits in one `rtq2_submit_many` call (as a client
    /// coalesces them), sometimes repeating an id of the call or naming a
    /// task that exists: those must be duplicates, the rest created.
    async fn submit_batch(&mut self) {
        let n = 2 + self.rng.below(3);
        let mut ids: Vec<String> = Vec::new();
        let mut expect_new = Vec::new();
        for _ in 0..n {
            if !ids.is_empty() && self.rng.percent(15) {
                let again = ids[self.rng.below(ids.len())].clone();
                ids.push(again);
                expect_new.push(false);
            } else if self.next_task > 0 && self.rng.percent(10) {
                ids.push(format!("t{}", 1 + self.rng.below(self.next_task)));
                expect_new.push(false);
            } else {
                self.next_task += 1;
                ids.push(format!("t{}", self.next_task));
                expect_new.push(true);
            }
        }
        let reply = self.reply.clone();
        let maxes: Vec<u32> = ids.iter().map(|_| 1 + self.rng.below(3) as u32).collect();
        let tasks: Vec<Task<'_>> = ids
            .iter()
            .zip(&maxes)
            .map(|(id, max)| Task {
                id,
                priority: self.rng.below(3) as i16 - 1,
                timeout_ms: if self.rng.percent(50) { 600_000 } else { 0 },
                max_attempts: *max,
                reply: &reply,
                stream: self.rng.percent(50),
            })
            .collect();
        let replies = self.p.submit_many(&tasks).await;
        drop(tasks);
        if replies.len() != ids.len() {
            self.fail(format!("submit_many {ids:?}: {replies:?}"));
        }
        for ((id, new), (max, reply)) in ids.iter().zip(&expect_new).zip(maxes.iter().zip(&replies))
        {
            match (new, reply) {
                (true, SubmitReply::Accepted { .. }) => {
                    self.tasks.insert(
                        id.clone(),
                        TaskModel {
                            max: *max,
                            ..Default::default()
                        },
                    );
                }
                (false, SubmitReply::Duplicate { .. }) => {}
                _ => self.fail(format!("submit_many: {id} (new: {new}) -> {reply:?}")),
            }
        }
        self.note(format!("submit_many {ids:?} -> {replies:?}"));
    }

    async fn submit(&mut self) {
        self.next_task += 1;
        let id = format!("t{}", self.next_task);
        let max = 1 + self.rng.below(3) as u32;
        let task = Task {
            id: &id,
            priority: self.rng.below(3) as i16 - 1,
            timeout_ms: if self.rng.percent(50) { 600_000 } else { 0 },
            max_attempts: max,
            reply: &self.reply.clone(),
            stream: self.rng.percent(50),
        };
        let first = self.p.submit(&task).await;
        if !matches!(first, SubmitReply::Accepted { .. }) {
            self.fail(format!("submit {id}: {first:?}"));
        }
        if self.rng.percent(10) {
            // The reply was lost: the retry finds its own task.
            let again = self.p.submit(&task).await;
            if !matches!(again, SubmitReply::Duplicate { .. }) {
                self.fail(format!("retried submit {id}: {again:?}"));
            }
        }
        self.tasks.insert(
            id.clone(),
            TaskModel {
                max,
                ..Default::default()
            },
        );
        self.note(format!("submit {id} max={max} -> {first:?}"));
    }

    fn pick_worker(&mut self) -> usize {
        self.rng.below(self.workers.len())
    }

    async fn deliver(&mut self, w: usize) {
        let wid = self.workers[w].id.clone();
        let Some(msg) = self.p.pop(&wid).await else {
            return;
        };
        if self.rng.percent(4) {
            self.note(format!("deliver to {wid}: LOST {msg:?}"));
            return;
        }
        match msg {
            InboxMessage::Task(d) => {
                if self.rng.percent(5) {
                    // Delivered twice: the copy goes back to the inbox.
                    let raw = format!(
                        "T\t{}\t{}\t{}\t{}\t{}\t{}",
                        d.id,
                        d.attempt,
                        d.handed_out_ms,
                        d.deadline_ms,
                        d.submitted_ms,
                        String::from_utf8_lossy(&d.spec)
                    );
                    let key = self.p.keys.inbox(&wid);
                    self.p.raw(&["RPUSH", &key, &raw]).await;
                }
                let key = (d.id.clone(), d.attempt);
                let worker = &self.workers[w];
                if worker.running.contains_key(&key) {
                    self.note(format!("deliver {key:?} to {wid}: repeat ignored"));
                } else if worker.running.len() >= worker.slots || !worker.accepting {
                    let inst = worker.instance.clone();
                    let reply = self
                        .p
                        .release(
                            &wid,
                            &inst,
                            ReleaseMode::HandBack,
                            &[HandBack {
                                id: d.id.clone(),
                                attempt: d.attempt,
                                started: false,
                            }],
                        )
                        .await;
                    if let ReleaseReply::Ok { handed_back: 1 } = reply {
                        self.tasks.get_mut(&d.id).unwrap().unstarted_handbacks += 1;
                    }
                    self.note(format!(
                        "deliver {key:?} to full {wid}: hand back -> {reply:?}"
                    ));
                } else {
                    self.workers[w]
                        .running
                        .insert(key.clone(), Attempt::default());
                    self.note(format!("deliver {key:?} to {wid}: started"));
                }
            }
            InboxMessage::Cancel {
                id, attempt, kind, ..
            } => {
                let release = !matches!(kind, rtq_core::protocol::CancelKind::Requeued);
                if let Some(a) = self.workers[w].running.get_mut(&(id.clone(), attempt)) {
                    a.stop.get_or_insert(release);
                }
                self.note(format!("cancel message {id}/{attempt} {kind:?} at {wid}"));
            }
            other => self.fail(format!("unreadable inbox message {other:?}")),
        }
    }

    fn pick_attempt(&mut self, w: usize) -> Option<(String, u64)> {
        let keys: Vec<_> = self.workers[w].running.keys().cloned().collect();
        if keys.is_empty() {
            return None;
        }
        Some(keys[self.rng.below(keys.len())].clone())
    }

    async fn chunk(&mut self, w: usize) {
        let Some(key) = self.pick_attempt(w) else {
            return;
        };
        let attempt = self.workers[w].running[&key].clone();
        if attempt.stop.is_some() {
            return;
        }
        let wid = self.workers[w].id.clone();
        let n = 1 + self.rng.below(3) as u64;
        let chunks: Vec<Vec<u8>> = (attempt.written..attempt.written + n)
            .map(|s| chunk_text(&key.0, key.1, s))
            .collect();
        let mut reply = self
            .p
            .chunk(&wid, &key.0, key.1, attempt.written, &chunks)
            .await;
        if self.rng.percent(10) {
            // The reply was lost and the write is sent again.
            reply = self
                .p
                .chunk(&wid, &key.0, key.1, attempt.written, &chunks)
                .await;
        }
        self.note(format!(
            "chunk {key:?} by {wid} seq0={} n={n} -> {reply:?}",
            attempt.written
        ));
        self.apply_chunk(w, &key, &reply);
    }

    /// What a chunk write's answer means for the simulated worker.
    fn apply_chunk(&mut self, w: usize, key: &(String, u64), reply: &ChunkReply) {
        let Some(a) = self.workers[w].running.get_mut(key) else {
            return;
        };
        match reply.status {
            WriteStatus::Ok | WriteStatus::Order => a.written = reply.chunks,
            WriteStatus::Ended | WriteStatus::NotFound => {
                a.stop.get_or_insert(true);
            }
            WriteStatus::Fenced => {
                self.workers[w].running.remove(key);
            }
            WriteStatus::TooLarge => self.fail(format!("TOO_LARGE for {key:?}")),
        }
    }

    /// Sends the completions `items` of worker `wid`: as one
    /// `rtq2_complete_many`, or (`mixed`) as the `rtq2_write_many` of
    /// `groups`, chunk writes among them. Answers the completions' replies
    /// in item order, and each chunk write's (key, seq0, n) and reply.
    async fn send_writes(
        &mut self,
        wid: &str,
        items: &[CompletionItem],
        groups: &[Group],
        mixed: bool,
    ) -> (Vec<CompleteReply>, Vec<ChunkWrite>) {
        let endings: Vec<Ending<'_>> = items
            .iter()
            .map(|(key, seq0, outcome, want_next)| Ending {
                id: &key.0,
                attempt: key.1,
                seq0: *seq0,
                outcome: *outcome,
                want_next: *want_next,
                chunks: &[],
            })
            .collect();
        if !mixed {
            return match self.p.complete_many(wid, &endings).await {
                Ok(r) => (r, Vec::new()),
                Err(e) => self.fail(format!("complete_many {items:?} by {wid}: {e}")),
            };
        }
        let texts: Vec<Vec<Vec<u8>>> = groups
            .iter()
            .map(|g| match g {
                Group::Chunks(key, seq0, n) => (*seq0..seq0 + n)
                    .map(|s| chunk_text(&key.0, key.1, s))
                    .collect(),
                Group::End(_) => Vec::new(),
            })
            .collect();
        let writes: Vec<Write<'_>> = groups
            .iter()
            .zip(&texts)
            .map(|(g, chunks)| match g {
                Group::Chunks(key, seq0, _) => Write::Chunks {
                    id: &key.0,
                    attempt: key.1,
                    seq0: *seq0,
                    chunks,
                },
                Group::End(i) => Write::End(endings[*i].clone()),
            })
            .collect();
        let answers = match self.p.write_many(wid, &writes).await {
            Ok(r) => r,
            Err(e) => self.fail(format!("write_many {groups:?} by {wid}: {e}")),
        };
        drop(writes);
        let mut replies: Vec<Option<CompleteReply>> = vec![None; items.len()];
        let mut chunk_replies = Vec::new();
        for (g, answer) in groups.iter().zip(answers) {
            match (g, answer) {
                (Group::End(i), SlotWriteReply::Complete(r)) => replies[*i] = Some(r),
                (Group::Chunks(key, seq0, n), SlotWriteReply::Chunks(r)) => {
                    chunk_replies.push(((key.clone(), *seq0, *n), r))
                }
                (g, a) => self.fail(format!("write_many answered {a:?} for {g:?}")),
            }
        }
        let replies = replies.into_iter().flatten().collect();
        (replies, chunk_replies)
    }

    async fn complete(&mut self, w: usize) {
        let Some(key) = self.pick_attempt(w) else {
            return;
        };
        let attempt = self.workers[w].running[&key].clone();
        if attempt.stop == Some(false) {
            self.workers[w].running.remove(&key);
            self.note(format!("forget {key:?} at {}", self.workers[w].id));
            return;
        }
        let wid = self.workers[w].id.clone();
        let outcome = match (attempt.stop, self.rng.below(10)) {
            (Some(_), _) => CompleteOutcome::Failed,
            (None, 0..=4) => CompleteOutcome::Done,
            (None, 5..=6) => CompleteOutcome::Failed,
            _ => CompleteOutcome::Retry,
        };
        let want_next = self.workers[w].accepting && self.rng.percent(90);
        let mut seq0 = attempt.written;
        let mut reply = self
            .p
            .complete(&wid, &key.0, key.1, seq0, outcome, want_next, &[])
            .await;
        if reply.status == WriteStatus::Order {
            seq0 = reply.chunks;
            reply = self
                .p
                .complete(&wid, &key.0, key.1, seq0, outcome, want_next, &[])
                .await;
        }
        if self.rng.percent(15) {
            // The reply was lost: the retry must replay the same answer.
            let again = self
                .p
                .complete(&wid, &key.0, key.1, seq0, outcome, want_next, &[])
                .await;
            if again.next != reply.next
                || (again.status != reply.status && reply.status != WriteStatus::Fenced)
            {
                self.fail(format!(
                    "complete {key:?} by {wid} replayed {again:?}, first answer {reply:?}"
                ));
            }
        }
        self.note(format!(
            "complete {key:?} by {wid} {outcome:?} next={want_next} -> {:?} next {:?}",
            reply.status,
            reply.next.as_ref().map(|m| match m {
                InboxMessage::Task(d) => (d.id.clone(), d.attempt),
                _ => (String::new(), 0),
            })
        ));
        self.apply_complete(w, &key, &reply);
    }

    /// What a complete's answer means for the simulated worker: the
    /// attempt is over (unless ORDER) and the slot runs the next task.
    fn apply_complete(&mut self, w: usize, key: &(String, u64), reply: &CompleteReply) {
        if reply.status == WriteStatus::Order {
            return; // a concurrent write moved on; try again later
        }
        self.workers[w].running.remove(key);
        match &reply.next {
            Some(InboxMessage::Task(d)) => {
                self.workers[w]
                    .running
                    .insert((d.id.clone(), d.attempt), Attempt::default());
            }
            Some(other) => self.fail(format!("complete returned {other:?}")),
            None => {}
        }
    }

    /// Several completes of one worker in one `rtq2_complete_many` call (as
    /// a worker coalesces them), sometimes with a completion repeated in
    /// the call (it must replay the first one's answer), a completion of a
    /// task this worker does not hold (FENCED, and nothing else changes),
    /// or the whole call's reply lost and the call sent again (every
    /// answer replayed).
    async fn complete_batch(&mut self, w: usize) {
        let wid = self.workers[w].id.clone();
        let mut keys: Vec<(String, u64)> = Vec::new();
        for (key, a) in &self.workers[w].running {
            if a.stop != Some(false) && self.rng.percent(70) {
                keys.push(key.clone());
            }
        }
        if keys.is_empty() {
            return;
        }
        let mut items: Vec<CompletionItem> = Vec::new();
        for key in &keys {
            let a = &self.workers[w].running[key];
            let outcome = match (a.stop, self.rng.below(10)) {
                (Some(_), _) => CompleteOutcome::Failed,
                (None, 0..=4) => CompleteOutcome::Done,
                (None, 5..=6) => CompleteOutcome::Failed,
                _ => CompleteOutcome::Retry,
            };
            let want_next = self.workers[w].accepting && self.rng.percent(90);
            items.push((key.clone(), a.written, outcome, want_next));
        }
        // A completion of a task held by someone else, in the middle.
        let mut foreign = None;
        let tries = if self.rng.percent(30) { 3 } else { 0 };
        for _ in 0..tries {
            if let Some(id) = self.pick_task().await {
                let h = self.p.hash(&id).await;
                // Not a queued task: this very call could hand it to
                // this worker (then ending it is this worker's right).
                let queued = h.get("st").map(String::as_str) == Some("queued");
                if !queued && h.get("w").is_some_and(|o| *o != wid) {
                    let att = h
                        .get("att")
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(1)
                        .max(1);
                    let at = self.rng.below(items.len() + 1);
                    items.insert(at, ((id, att), 0, CompleteOutcome::Done, true));
                    foreign = Some(at);
                    break;
                }
            }
        }
        // A completion repeated within the call.
        let mut repeat = None;
        if self.rng.percent(15) {
            let i = self.rng.below(items.len());
            if Some(i) != foreign {
                items.push(items[i].clone());
                repeat = Some((i, items.len() - 1));
            }
        }
        // Half the calls are `rtq2_write_many`, as a worker's coalescer
        // sends them: chunk writes before some completions (the completion
        // then counts them in its seq0) and for attempts the call does not
        // end, among the completions.
        let mixed = self.rng.percent(50);
        let mut groups: Vec<Group> = Vec::new();
        for i in 0..items.len() {
            let own = Some(i) != foreign && repeat.map_or(true, |(_, again)| again != i);
            let live = self.workers[w]
                .running
                .get(&items[i].0)
                .is_some_and(|a| a.stop.is_none());
            if mixed && own && live && self.rng.percent(60) {
                let n = 1 + self.rng.below(3) as u64;
                groups.push(Group::Chunks(items[i].0.clone(), items[i].1, n));
                items[i].1 += n;
                if let Some((first, again)) = repeat.filter(|(first, _)| *first == i) {
                    debug_assert_eq!(first, i);
                    items[again].1 += n;
                }
            }
            groups.push(Group::End(i));
        }
        if mixed {
            let others: Vec<((String, u64), u64)> = self.workers[w]
                .running
                .iter()
                .filter(|(k, a)| a.stop.is_none() && !keys.contains(k))
                .map(|(k, a)| (k.clone(), a.written))
                .collect();
            for (key, written) in others {
                if self.rng.percent(50) {
                    let n = 1 + self.rng.below(3) as u64;
                    let at = self.rng.below(groups.len() + 1);
                    groups.insert(at, Group::Chunks(key, written, n));
                }
            }
        }
        let (replies, chunk_replies) = self.send_writes(&wid, &items, &groups, mixed).await;
        if self.rng.percent(15) {
            // The reply was lost: the whole call is sent again and must
            // replay every answer.
            self.batches[4] += 1;
            let (again, chunks_again) = self.send_writes(&wid, &items, &groups, mixed).await;
            for (i, (a, r)) in again.iter().zip(&replies).enumerate() {
                // An ORDER wrote nothing: its resend is a new call.
                if r.status == WriteStatus::Order {
                    continue;
                }
                if a.next != r.next || (a.status != r.status && r.status != WriteStatus::Fenced) {
                    self.fail(format!(
                        "complete_many item {i} {:?} by {wid} replayed {a:?}, first answer {r:?}",
                        items[i]
                    ));
                }
            }
            // A chunk write sent again never appends twice.
            for ((key, seq0, n), r) in &chunks_again {
                if r.status == WriteStatus::Ok {
                    self.fail(format!(
                        "write_many: chunk write {key:?} seq0={seq0} n={n} by {wid} applied again: {r:?}"
                    ));
                }
            }
        }
        self.batches[5] += usize::from(mixed);
        self.batches[6] += chunk_replies.len();
        for ((key, seq0, n), reply) in &chunk_replies {
            self.note(format!(
                "write_many chunk {key:?} by {wid} seq0={seq0} n={n} -> {reply:?}"
            ));
            self.apply_chunk(w, key, reply);
        }
        if replies.len() != items.len() {
            self.fail(format!("complete_many {items:?}: {replies:?}"));
        }
        self.batches[0] += 1;
        self.batches[1] += items.len();
        self.batches[2] += usize::from(foreign.is_some());
        self.batches[3] += usize::from(repeat.is_some());
        self.note(format!(
            "complete_many by {wid} {:?} (foreign {foreign:?}, repeat {repeat:?}) -> {:?}",
            items
                .iter()
                .map(|(k, _, o, n)| (k, o, n))
                .collect::<Vec<_>>(),
            replies
                .iter()
                .map(|r| (
                    r.status,
                    r.next.as_ref().map(|m| match m {
                        InboxMessage::Task(d) => (d.id.clone(), d.attempt),
                        _ => (String::new(), 0),
                    })
                ))
                .collect::<Vec<_>>()
        ));
        for (i, ((key, ..), reply)) in items.iter().zip(&replies).enumerate() {
            if Some(i) == foreign {
                if reply.status != WriteStatus::Fenced || reply.next.is_some() {
                    self.fail(format!(
                        "complete_many: foreign {key:?} by {wid} -> {reply:?}"
                    ));
                }
                continue;
            }
            if let Some((first, _)) = repeat.filter(|(_, again)| *again == i) {
                let r = &replies[first];
                if reply.next != r.next || reply.status != r.status {
                    self.fail(format!(
                        "complete_many: repeated {key:?} by {wid} answered {reply:?}, its first {r:?}"
                    ));
                }
                continue;
            }
            self.apply_complete(w, key, reply);
        }
    }

    fn running_pairs(&self, w: usize) -> Vec<(String, u64)> {
        self.workers[w].running.keys().cloned().collect()
    }

    fn apply_stops(&mut self, w: usize, stops: &[rtq_core::functions::heartbeat::StopOrder]) {
        for s in stops {
            if let Some(a) = self.workers[w].running.get_mut(&(s.id.clone(), s.attempt)) {
                let release = matches!(s.why, StopWhy::Cancelled | StopWhy::Expired);
                a.stop.get_or_insert(release);
            }
        }
    }

    async fn heartbeat(&mut self, w: usize) {
        let wid = self.workers[w].id.clone();
        let inst = self.workers[w].instance.clone();
        let pairs = self.running_pairs(w);
        let slots = self.workers[w].slots;
        let accepting = self.workers[w].accepting;
        let mut reply = self
            .p
            .heartbeat(&wid, &inst, slots, accepting, &pairs)
            .await;
        let gone = reply == BeatReply::Gone;
        if gone {
            reply = self.p.register(&wid, &inst, slots, &pairs).await;
        }
        self.note(format!(
            "heartbeat {wid} running={pairs:?} gone={gone} -> {reply:?}"
        ));
        match reply {
            BeatReply::Ok(report) => self.apply_stops(w, &report.stop),
            other => self.fail(format!("heartbeat of {wid}: {other:?}")),
        }
    }

    async fn restart(&mut self, w: usize) {
        let inst = self.new_instance();
        let worker = &mut self.workers[w];
        worker.instance = inst.clone();
        worker.running.clear();
        worker.accepting = true;
        let (wid, slots) = (worker.id.clone(), worker.slots);
        let reply = self.p.register(&wid, &inst, slots, &[]).await;
        self.note(format!("restart {wid} as {inst} -> {reply:?}"));
    }

    async fn leave(&mut self, w: usize) {
        let wid = self.workers[w].id.clone();
        let inst = self.workers[w].instance.clone();
        // Tasks it owns but never received go back without using an attempt.
        for id in self.p.owned(&wid).await {
            let h = self.p.hash(&id).await;
            let att: u64 = h.get("att").and_then(|a| a.parse().ok()).unwrap_or(0);
            if h.get("st").map(String::as_str) == Some("running")
                && h.get("w") == Some(&wid)
                && !self.workers[w].running.contains_key(&(id.clone(), att))
            {
                self.tasks.get_mut(&id).unwrap().unstarted_handbacks += 1;
            }
        }
        let items: Vec<HandBack> = self.workers[w]
            .running
            .keys()
            .map(|(id, attempt)| HandBack {
                id: id.clone(),
                attempt: *attempt,
                started: true,
            })
            .collect();
        let reply = self
            .p
            .release(&wid, &inst, ReleaseMode::Leave, &items)
            .await;
        self.note(format!("leave {wid} handing back {items:?} -> {reply:?}"));
        self.restart(w).await;
    }

    async fn pick_task(&mut self) -> Option<String> {
        if self.tasks.is_empty() {
            return None;
        }
        let ids: Vec<&String> = self.tasks.keys().collect();
        Some(ids[self.rng.below(ids.len())].clone())
    }

    async fn step_once(&mut self) -> bool {
        let w = self.pick_worker();
        let wid = self.workers[w].id.clone();
        let mut housekept = false;
        match self.rng.below(100) {
            0..=11 => self.submit().await,
            12..=14 => self.submit_batch().await,
            15..=34 => self.deliver(w).await,
            35..=44 => self.chunk(w).await,
            45..=56 => self.complete(w).await,
            57..=62 => self.complete_batch(w).await,
            63..=70 => self.heartbeat(w).await,
            71..=73 => {
                if let Some(id) = self.pick_task().await {
                    let r = self.p.cancel(&id).await;
                    self.note(format!("cancel {id} -> {r:?}"));
                }
            }
            74..=75 => {
                if let Some(id) = self.pick_task().await {
                    let r = self.p.requeue(&id).await;
                    let model = self.tasks.get_mut(&id).unwrap();
                    if let RequeueReply::Requeued(prev) = r {
                        model.operator_requeues += 1;
                        if prev.is_terminal() {
                            model.requeued_after_end += 1;
                        }
                    }
                    self.note(format!("operator requeue {id} -> {r:?}"));
                }
            }
            76..=82 => {
                let r = self.p.housekeep().await;
                self.note(format!("housekeep -> {r:?}"));
                housekept = true;
            }
            83 => self.restart(w).await,
            84 => self.leave(w).await,
            85..=86 => {
                let key = self.p.keys.workers();
                self.p.raw(&["ZADD", &key, "XX", "1", &wid]).await;
                self.note(format!("FAULT lease of {wid} lapsed"));
            }
            87..=88 => {
                let worker = &mut self.workers[w];
                worker.accepting = !worker.accepting;
                let accepting = worker.accepting;
                self.note(format!("intake of {wid} -> {accepting}"));
                if !accepting {
                    let inst = self.workers[w].instance.clone();
                    let r = self.p.release(&wid, &inst, ReleaseMode::Pause, &[]).await;
                    self.note(format!("pause {wid} -> {r:?}"));
                }
                self.heartbeat(w).await;
            }
            89..=91 => {
                if let Some(id) = self.pick_task().await {
                    let key = self.p.keys.task(&id);
                    if self.p.field(&id, "st").await.as_deref() == Some("running") {
                        self.p.raw(&["HSET", &key, "start", "0"]).await;
                        self.note(format!("FAULT delivery of {id} aged past the lease"));
                    }
                }
            }
            92..=94 => {
                if let Some(id) = self.pick_task().await {
                    let key = self.p.keys.task(&id);
                    let deadlines = self.p.keys.deadlines();
                    if self.p.field(&id, "st").await.is_some() {
                        self.p.raw(&["HSET", &key, "dl", "1"]).await;
                        self.p.raw(&["ZADD", &deadlines, "1", &id]).await;
                        self.note(format!("FAULT deadline of {id} passed"));
                    }
                }
            }
            _ => {
                let delayed = self.p.keys.delayed();
                for id in self.p.zset(&delayed).await {
                    self.p.raw(&["ZADD", &delayed, "XX", "0", &id]).await;
                }
                self.note("FAULT every retry backoff passed".into());
            }
        }
        housekept
    }

    async fn check(&mut self, after_housekeeping: bool) {
        let k = self.p.keys.clone();
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        // Everything in one pipelined read.
        let mut pipe = redis::pipe();
        pipe.cmd("TIME")
            .zrange(k.pending(), 0, -1)
            .zrange(k.delayed(), 0, -1)
            .zrange_withscores(k.workers(), 0, -1)
            .zrange_withscores(k.free(), 0, -1)
            .cmd("XRANGE")
            .arg(&self.reply)
            .arg(format!("({}", self.last_event))
            .arg("+");
        for w in &self.workers {
            pipe.smembers(k.worker_tasks(&w.id))
                .hget(k.worker(&w.id), "slots");
        }
        for id in &ids {
            pipe.hgetall(k.task(id)).lrange(k.output(id), 0, -1);
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.p.conn).await.unwrap();
        let mut it = replies.into_iter();
        let mut next = || it.next().unwrap();
        let time: Vec<i64> = redis::from_redis_value(next()).unwrap();
        let now_ms = time[0] * 1000 + time[1] / 1000;
        let pending: Vec<String> = redis::from_redis_value(next()).unwrap();
        let delayed: Vec<String> = redis::from_redis_value(next()).unwrap();
        let leases: Vec<(String, f64)> = redis::from_redis_value(next()).unwrap();
        let free: Vec<(String, f64)> = redis::from_redis_value(next()).unwrap();
        let events = next();
        let mut owners: HashMap<String, Vec<String>> = HashMap::new();
        let mut owned_count: HashMap<String, u64> = HashMap::new();
        let mut slots_of: HashMap<String, u64> = HashMap::new();
        for w in &self.workers {
            let owned: Vec<String> = redis::from_redis_value(next()).unwrap();
            let slots: Option<u64> = redis::from_redis_value(next()).unwrap();
            owned_count.insert(w.id.clone(), owned.len() as u64);
            slots_of.insert(w.id.clone(), slots.unwrap_or(0));
            for id in owned {
                owners.entry(id).or_default().push(w.id.clone());
            }
        }
        let mut tasks: Vec<(TaskHash, Vec<Vec<u8>>)> = Vec::new();
        for _ in &ids {
            let h: HashMap<String, String> = redis::from_redis_value(next()).unwrap();
            let o: Vec<Vec<u8>> = redis::from_redis_value(next()).unwrap();
            tasks.push((h, o));
        }

        // Final events per task (new ones since the last check).
        if let redis::Value::Array(entries) = events {
            for e in entries {
                let redis::Value::Array(mut parts) = e else {
                    continue;
                };
                self.last_event = redis::from_redis_value(parts[0].clone()).unwrap();
                let redis::Value::Array(flat) = parts.remove(1) else {
                    continue;
                };
                let fields: Vec<(Vec<u8>, Vec<u8>)> = flat
                    .chunks(2)
                    .map(|p| {
                        (
                            redis::from_redis_value::<Vec<u8>>(p[0].clone()).unwrap(),
                            redis::from_redis_value::<Vec<u8>>(p[1].clone()).unwrap(),
                        )
                    })
                    .collect();
                if fields.iter().any(|(k, _)| k == b"created") {
                    continue;
                }
                match ReplyEvent::decode(&fields) {
                    Ok(ReplyEvent::Final { id, .. }) => *self.finals.entry(id).or_default() += 1,
                    Ok(_) => {}
                    Err(e) => self.fail(format!("undecodable reply event: {e}")),
                }
            }
        }

        let mut hashes: HashMap<String, HashMap<String, String>> = HashMap::new();
        for (id, (h, output)) in ids.iter().zip(tasks) {
            let st = h.get("st").cloned().unwrap_or_default();
            let state = TaskState::parse(&st)
                .unwrap_or_else(|| self.fail(format!("{id} has state {st:?}")));
            let num = |f: &str| h.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let in_pending = pending.contains(id);
            let in_delayed = delayed.contains(id);
            let owned_by = owners.get(id).cloned().unwrap_or_default();
            let w = h.get("w").cloned().unwrap_or_default();
            match state {
                TaskState::Queued => {
                    if in_pending == in_delayed || !owned_by.is_empty() {
                        self.fail(format!(
                            "queued {id}: pending={in_pending} delayed={in_delayed} owned by {owned_by:?}"
                        ));
                    }
                }
                TaskState::Running => {
                    if in_pending || in_delayed || owned_by != vec![w.clone()] {
                        self.fail(format!(
                            "running {id} on {w:?}: pending={in_pending} delayed={in_delayed} owned by {owned_by:?}"
                        ));
                    }
                }
                _ => {
                    if in_pending || in_delayed || owned_by.iter().any(|o| o != &w) {
                        self.fail(format!(
                            "ended {id} ({st}): pending={in_pending} delayed={in_delayed} owned by {owned_by:?}"
                        ));
                    }
                }
            }
            let model = &self.tasks[id];
            let (att, fails) = (num("att"), num("fails"));
            let bound = u64::from(model.operator_requeues + 1) * u64::from(model.max)
                + u64::from(model.unstarted_handbacks);
            if fails > u64::from(model.max) || att > bound {
                self.fail(format!(
                    "{id}: attempt {att}, fails {fails}, max {}, operator requeues {}, unstarted hand-backs {}",
                    model.max, model.operator_requeues, model.unstarted_handbacks
                ));
            }
            let expected_finals = u32::from(state.is_terminal()) + model.requeued_after_end;
            let got = self.finals.get(id).copied().unwrap_or(0);
            if got != expected_finals {
                self.fail(format!(
                    "{id} ({st}) has {got} final events, expected {expected_finals}"
                ));
            }
            let nc = num("nc");
            let wanted: Vec<Vec<u8>> = (0..nc).map(|s| chunk_text(id, att, s)).collect();
            if output != wanted {
                self.fail(format!(
                    "{id} attempt {att}: output {:?}, expected {nc} chunks of that attempt",
                    output
                        .iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect::<Vec<_>>()
                ));
            }
            hashes.insert(id.clone(), h);
        }

        for sim in &self.workers {
            if sim.running.len() > sim.slots {
                self.fail(format!(
                    "{} runs {} attempts with {} slots",
                    sim.id,
                    sim.running.len(),
                    sim.slots
                ));
            }
        }
        // Retire the oldest ended tasks nobody owns.
        let mut tracked = self.tasks.len();
        for id in &ids {
            if tracked <= TRACKED {
                break;
            }
            let h = &hashes[id];
            let ended = h
                .get("st")
                .and_then(|s| TaskState::parse(s))
                .is_some_and(|s| s.is_terminal());
            if ended && !owners.contains_key(id) {
                self.tasks.remove(id);
                tracked -= 1;
            }
        }

        let mut live_free = Vec::new();
        for (wid, lease) in &leases {
            let free = free
                .iter()
                .find(|(w, _)| w == wid)
                .map_or(0, |(_, n)| *n as u64);
            let owned = owned_count.get(wid).copied().unwrap_or(0);
            let slots = slots_of.get(wid).copied().unwrap_or(0);
            if free + owned > slots {
                self.fail(format!(
                    "{wid}: free {free} + owned {owned} > slots {slots}"
                ));
            }
            if free > 0 && *lease as i64 > now_ms {
                live_free.push(wid.clone());
            }
        }
        if let Some((stray, _)) = free
            .iter()
            .find(|(m, _)| !leases.iter().any(|(w, _)| w == m))
        {
            self.fail(format!("free slots listed for unregistered worker {stray}"));
        }
        if after_housekeeping {
            for wid in &live_free {
                for id in &pending {
                    let h = &hashes[id];
                    let avoided = h.get("avoid") == Some(wid)
                        && h.get("avu")
                            .and_then(|a| a.parse::<i64>().ok())
                            .unwrap_or(0)
                            > now_ms;
                    if !avoided {
                        self.fail(format!(
                            "{id} is pending after housekeeping while {wid} has a free slot"
                        ));
                    }
                }
            }
        }
    }
}

async fn run_model(seed: u64, steps: usize) {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "model").await;
    let reply = p.create_reply_stream("c1").await;
    let mut sim = Sim {
        p,
        rng: Rng(seed),
        seed,
        step: 0,
        reply,
        workers: Vec::new(),
        tasks: BTreeMap::new(),
        next_task: 0,
        next_instance: 0,
        log: Vec::new(),
        finals: HashMap::new(),
        last_event: "0-0".into(),
        batches: [0; 7],
    };
    for (i, slots) in [1usize, 2, 3].into_iter().enumerate() {
        let inst = sim.new_instance();
        sim.workers.push(SimWorker {
            id: format!("w{i}"),
            instance: inst,
            slots,
            accepting: true,
            running: BTreeMap::new(),
        });
        sim.restart(i).await;
    }
    for step in 0..steps {
        sim.step = step;
        let housekept = sim.step_once().await;
        sim.check(housekept).await;
    }
    let ended = sim.finals.len();
    println!(
        "model seed {seed}: {steps} steps, {} tasks submitted, {ended} ended at least once",
        sim.next_task
    );
    assert!(ended > 0, "the run must end some tasks to mean anything");
    let [calls, items, foreign, repeats, replays, mixed, chunk_writes] = sim.batches;
    println!(
        "complete_many: {calls} calls, {items} completions, {foreign} foreign, {repeats} repeated, {replays} calls replayed; {mixed} sent as write_many with {chunk_writes} chunk writes"
    );
    assert!(
        steps < 1000 || items > calls,
        "a run must send batches of several completions to mean anything"
    );
    assert!(
        steps < 1000 || chunk_writes > 0,
        "a run must mix chunk writes into batches to mean anything"
    );
}

#[tokio::test]
async fn random_operations_and_faults_keep_every_protocol_invariant() {
    let seed = support::rng::seed();
    let steps = env_number("RTQ_MODEL_STEPS").unwrap_or(3000) as usize;
    println!("model seed {seed} (RTQ_MODEL_SEED={seed} replays this run)");
    run_model(seed, steps).await;
}
