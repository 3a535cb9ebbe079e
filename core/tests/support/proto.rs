//! Drives single protocol functions on a real redis-server, for tests that
//! need to place faults between steps (a lost reply, a repeated delivery, a
//! lapsed lease) that the Client and Worker would never produce on cue.
#![allow(dead_code)]

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use rtq_core::functions::cancel::{Cancel, CancelMode, CancelReply};
use rtq_core::functions::chunk::{Chunk, ChunkReply};
use rtq_core::functions::complete::{
    Complete, CompleteMany, CompleteOutcome, CompleteReply, SlotWrite, SlotWriteReply, WriteMany,
};
use rtq_core::functions::heartbeat::{Beat, BeatReply, Heartbeat, Register};
use rtq_core::functions::queue_admin::{Housekeep, HousekeepReport};
use rtq_core::functions::release::{HandBack, Release, ReleaseMode, ReleaseReply};
use rtq_core::functions::requeue::{Requeue, RequeueReply};
use rtq_core::functions::submit::{Submit, SubmitMany, SubmitReply};
use rtq_core::functions::{self, Function};
use rtq_core::keys::QueueKeys;
use rtq_core::protocol::InboxMessage;
use rtq_core::Error;

pub use rtq_testkit::RedisServer;

/// A connection plus the queue's keys.
pub struct Proto {
    pub conn: MultiplexedConnection,
    pub keys: QueueKeys,
}

/// Submit options for protocol tests.
#[derive(Clone, Debug)]
pub struct Task<'a> {
    pub id: &'a str,
    pub priority: i16,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub reply: &'a str,
    pub stream: bool,
}

impl<'a> Task<'a> {
    pub fn new(id: &'a str) -> Self {
        Self {
            id,
            priority: 0,
            timeout_ms: 0,
            max_attempts: 3,
            reply: "",
            stream: false,
        }
    }
}

/// One completion of a `complete_many` call.
#[derive(Clone, Debug)]
pub struct Ending<'a> {
    pub id: &'a str,
    pub attempt: u64,
    pub seq0: u64,
    pub outcome: CompleteOutcome,
    pub want_next: bool,
    pub chunks: &'a [Vec<u8>],
}

impl<'a> Ending<'a> {
    /// Attempt 1 of task `id`, no chunks written before and none trailing.
    pub fn first(id: &'a str, outcome: CompleteOutcome, want_next: bool) -> Self {
        Self {
            id,
            attempt: 1,
            seq0: 0,
            outcome,
            want_next,
            chunks: &[],
        }
    }

    /// The same completion with trailing chunks.
    pub fn with_chunks(self, chunks: &'a [Vec<u8>]) -> Self {
        Self { chunks, ..self }
    }

    /// Its `rtq2_complete` arguments as worker `worker` (payload by
    /// outcome, the next task's spec apart).
    pub fn as_complete(&self, worker: &'a str) -> Complete<'a> {
        Complete {
            worker,
            id: self.id,
            attempt: self.attempt,
            seq0: self.seq0,
            outcome: self.outcome,
            payload: payload_of(self.outcome),
            want_next: self.want_next,
            next_apart: true,
            chunks: self.chunks,
        }
    }
}

/// One write of a `write_many` call: a chunk write or a completion.
#[derive(Clone, Debug)]
pub enum Write<'a> {
    /// Chunks of attempt `attempt` of `id`, `seq0` written before them.
    Chunks {
        id: &'a str,
        attempt: u64,
        seq0: u64,
        chunks: &'a [Vec<u8>],
    },
    /// A completion.
    End(Ending<'a>),
}

/// The payload a protocol test sends with `outcome`.
pub fn payload_of(outcome: CompleteOutcome) -> &'static str {
    if outcome == CompleteOutcome::Done {
        "{\"ok\":true}"
    } else {
        "it broke"
    }
}

/// The items of an array reply as bytes (integers as their digits), for
/// tests that read a function's raw reply.
pub fn reply_items(v: redis::Value) -> Vec<Vec<u8>> {
    use redis::Value;
    let Value::Array(items) = v else {
        panic!("an array reply was expected, got {v:?}")
    };
    items
        .into_iter()
        .map(|i| match i {
            Value::BulkString(b) => b,
            Value::Int(n) => n.to_string().into_bytes(),
            Value::SimpleString(s) => s.into_bytes(),
            other => panic!("unexpected reply item {other:?}"),
        })
        .collect()
}

/// The spec a protocol test submits for task `id`.
pub fn spec_of(id: &str) -> String {
    format!(r#"{{"v":2,"id":"{id}","input":{{}}}}"#)
}

impl Proto {
    pub async fn connect(redis: &RedisServer, queue: &str) -> Proto {
        let mut conn = super::patient_conn(&redis.url()).await;
        functions::ensure_loaded(&mut conn).await.unwrap();
        Proto {
            conn,
            keys: QueueKeys::new(queue).unwrap(),
        }
    }

    pub async fn call<F: Function>(&mut self, f: &F) -> Result<F::Reply, Error> {
        functions::call(&mut self.conn, &self.keys, f).await
    }

    pub async fn submit(&mut self, t: &Task<'_>) -> SubmitReply {
        let spec = spec_of(t.id);
        self.call(&Submit {
            id: t.id,
            spec: &spec,
            priority: t.priority,
            timeout_ms: t.timeout_ms,
            max_attempts: t.max_attempts,
            retention_ms: 600_000,
            reply: t.reply,
            stream: t.stream,
        })
        .await
        .unwrap()
    }

    /// Submits `tasks` in one `rtq2_submit_many` call.
    pub async fn submit_many(&mut self, tasks: &[Task<'_>]) -> Vec<SubmitReply> {
        let specs: Vec<String> = tasks.iter().map(|t| spec_of(t.id)).collect();
        let submits: Vec<Submit<'_>> = tasks
            .iter()
            .zip(&specs)
            .map(|(t, spec)| Submit {
                id: t.id,
                spec,
                priority: t.priority,
                timeout_ms: t.timeout_ms,
                max_attempts: t.max_attempts,
                retention_ms: 600_000,
                reply: t.reply,
                stream: t.stream,
            })
            .collect();
        self.call(&SubmitMany { tasks: &submits }).await.unwrap()
    }

    fn beat<'b>(
        worker: &'b str,
        instance: &'b str,
        slots: usize,
        accepting: bool,
        running: &'b [(String, u64)],
    ) -> Beat<'b> {
        Beat {
            worker,
            instance,
            lease_ms: 600_000,
            slots,
            accepting,
            running,
            info: &[],
        }
    }

    pub async fn register(
        &mut self,
        worker: &str,
        instance: &str,
        slots: usize,
        running: &[(String, u64)],
    ) -> BeatReply {
        self.call(&Register(Self::beat(
            worker, instance, slots, true, running,
        )))
        .await
        .unwrap()
    }

    pub async fn heartbeat(
        &mut self,
        worker: &str,
        instance: &str,
        slots: usize,
        accepting: bool,
        running: &[(String, u64)],
    ) -> BeatReply {
        self.call(&Heartbeat(Self::beat(
            worker, instance, slots, accepting, running,
        )))
        .await
        .unwrap()
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn complete(
        &mut self,
        worker: &str,
        id: &str,
        attempt: u64,
        seq0: u64,
        outcome: CompleteOutcome,
        want_next: bool,
        chunks: &[Vec<u8>],
    ) -> CompleteReply {
        self.call(&Complete {
            worker,
            id,
            attempt,
            seq0,
            outcome,
            payload: payload_of(outcome),
            want_next,
            next_apart: true,
            chunks,
        })
        .await
        .unwrap()
    }

    /// Ends `e` as `worker` with one `rtq2_complete` call.
    pub async fn end(&mut self, worker: &str, e: &Ending<'_>) -> CompleteReply {
        self.call(&e.as_complete(worker)).await.unwrap()
    }

    /// Ends `items` of `worker` in one `rtq2_complete_many` call.
    pub async fn complete_many(
        &mut self,
        worker: &str,
        items: &[Ending<'_>],
    ) -> Result<Vec<CompleteReply>, Error> {
        let completes: Vec<Complete<'_>> = items.iter().map(|e| e.as_complete(worker)).collect();
        self.call(&CompleteMany {
            completes: &completes,
        })
        .await
    }

    /// The chunk writes and completions `writes` of `worker` in one
    /// `rtq2_write_many` call, each answer sorted by its kind.
    pub async fn write_many(
        &mut self,
        worker: &str,
        writes: &[Write<'_>],
    ) -> Result<Vec<SlotWriteReply>, Error> {
        let slot_writes: Vec<SlotWrite<'_>> = writes
            .iter()
            .map(|w| match w {
                Write::Chunks {
                    id,
                    attempt,
                    seq0,
                    chunks,
                } => SlotWrite::Chunks(Chunk {
                    worker,
                    id,
                    attempt: *attempt,
                    seq0: *seq0,
                    chunks,
                }),
                Write::End(e) => SlotWrite::Complete(e.as_complete(worker)),
            })
            .collect();
        let many = WriteMany {
            writes: &slot_writes,
        };
        let replies = self.call(&many).await?;
        many.sort_replies(replies)
    }

    pub async fn chunk(
        &mut self,
        worker: &str,
        id: &str,
        attempt: u64,
        seq0: u64,
        chunks: &[Vec<u8>],
    ) -> ChunkReply {
        self.call(&Chunk {
            worker,
            id,
            attempt,
            seq0,
            chunks,
        })
        .await
        .unwrap()
    }

    pub async fn release(
        &mut self,
        worker: &str,
        instance: &str,
        mode: ReleaseMode,
        items: &[HandBack],
    ) -> ReleaseReply {
        self.call(&Release {
            worker,
            instance,
            mode,
            items,
        })
        .await
        .unwrap()
    }

    pub async fn cancel(&mut self, id: &str) -> CancelReply {
        self.call(&Cancel {
            id,
            mode: CancelMode::Cancel,
            reason: "test cancel",
        })
        .await
        .unwrap()
    }

    pub async fn requeue(&mut self, id: &str) -> RequeueReply {
        self.call(&Requeue {
            id,
            reason: "operator",
        })
        .await
        .unwrap()
    }

    pub async fn housekeep(&mut self) -> HousekeepReport {
        self.call(&Housekeep).await.unwrap()
    }

    /// Pops one message from a worker's inbox.
    pub async fn pop(&mut self, worker: &str) -> Option<InboxMessage> {
        let raw: Option<Vec<u8>> = redis::cmd("LPOP")
            .arg(self.keys.inbox(worker))
            .query_async(&mut self.conn)
            .await
            .unwrap();
        raw.map(|r| InboxMessage::parse(&r))
    }

    pub async fn hash(&mut self, id: &str) -> HashMap<String, String> {
        redis::cmd("HGETALL")
            .arg(self.keys.task(id))
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    pub async fn field(&mut self, id: &str, field: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(self.keys.task(id))
            .arg(field)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    /// A counter of the task hash (`fails`, `nc`, `nb`, `fc`, `lc`): absent
    /// reads as 0, as every reader reads it (revision 11 writes no zero
    /// counters); present, it must be an integer.
    pub async fn count(&mut self, id: &str, field: &str) -> u64 {
        self.field(id, field)
            .await
            .map_or(0, |v| v.parse().expect("a counter is an integer"))
    }

    pub async fn free(&mut self, worker: &str) -> f64 {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(self.keys.free())
            .arg(worker)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        score.unwrap_or(0.0)
    }

    pub async fn owned(&mut self, worker: &str) -> Vec<String> {
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.worker_tasks(worker))
            .query_async(&mut self.conn)
            .await
            .unwrap();
        ids.sort();
        ids
    }

    pub async fn zset(&mut self, key: &str) -> Vec<String> {
        redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    pub async fn list(&mut self, key: &str) -> Vec<Vec<u8>> {
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    /// Runs a raw command (fault injection: ZADD a lease into the past...).
    pub async fn raw(&mut self, args: &[&str]) -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut self.conn).await.unwrap()
    }

    /// Every key with its type and DUMP, to prove a call wrote nothing.
    pub async fn snapshot(&mut self) -> Vec<(String, String, Option<Vec<u8>>)> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut self.conn)
            .await
            .unwrap();
        keys.sort();
        let mut out = Vec::new();
        for k in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut self.conn)
                .await
                .unwrap();
            let dump: Option<Vec<u8>> = redis::cmd("DUMP")
                .arg(&k)
                .query_async(&mut self.conn)
                .await
                .unwrap();
            out.push((k, kind, dump));
        }
        out
    }

    /// Creates a reply stream the way a client's reader does.
    pub async fn create_reply_stream(&mut self, client: &str) -> String {
        let key = self.keys.reply(client);
        self.raw(&["XADD", &key, "MAXLEN", "0", "*", "created", "1"])
            .await;
        key
    }
}

/// The task message's (id, attempt), or a panic naming what came instead.
pub fn task_of(m: Option<InboxMessage>) -> (String, u64) {
    match m {
        Some(InboxMessage::Task(d)) => (d.id, d.attempt),
        other => panic!("expected a task message, got {other:?}"),
    }
}
