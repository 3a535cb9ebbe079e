//! Protocol v3, stage 1: the server half of a `stream` queue
//! (`docs/PROTOCOL-V3.md`) and one typed binding per function.
//!
//! A stream queue keeps its tasks as entries of per-band streams read by
//! a consumer group: the group's pending list is the lease table (who
//! holds an entry, since when, how often it was delivered), a task's
//! attempt is the attempts used before its entry plus the entry's
//! delivery count, and every ending is fenced by that count. The library
//! (`core/lua/v3/stream.lua`, `rtq3`) is separate from v2's `rtq2`, so no
//! existing queue changes. [`Client`](crate::Client) and
//! [`Worker`](crate::Worker) do not speak it yet (stage 2); this module is
//! the low-level API its model-based test (`core/tests/model_v3.rs`) and
//! `bench_floor --rtq3` drive.
//!
//! Workers read new entries themselves with [`read_new`] (`XREADGROUP`
//! with `COUNT` = their free slots: capacity is the worker's decision),
//! renew their leases with [`beat`], take over lapsed ones with
//! [`takeover`], and end attempts with [`complete`].
//!
//! Every function checks all its arguments, the types of the keys it
//! would write and the fields it would compute with before its first
//! write (`core/tests/guards_v3.rs`): an invalid argument is
//! [`Error::InvalidInput`], a key of the queue that holds a foreign type
//! is [`Error::Redis`] with code `WRONGTYPE` naming the key; either way
//! nothing was written.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Value;

use crate::error::Error;
use crate::functions::{name_error, ReplyItems};
use crate::keys::QueueKeys;
use crate::protocol::{value_to_bytes, value_to_string, TaskState};

/// Name of the v3 Functions library.
pub const LIBRARY_NAME: &str = "rtq3";

/// Revision of the v3 library; must equal `REVISION` in `stream.lua`.
pub const LIBRARY_REVISION: i64 = 6;

/// The v3 library source as loaded with `FUNCTION LOAD`: `stream.lua`
/// (the header, shared helpers and most functions), then `write.lua`.
pub const LIBRARY_SOURCE: &str = concat!(
    include_str!("../../lua/v3/stream.lua"),
    "\n",
    include_str!("../../lua/v3/write.lua")
);

/// The consumer group every band stream has.
pub const GROUP: &str = "w";

/// Most priority bands a stream queue may have.
pub const MAX_BANDS: u8 = 5;

/// The stream of priority band `band` of queue `keys`.
pub fn band_key(keys: &QueueKeys, band: u8) -> String {
    format!("{}b:{band}", keys.prefix())
}

/// The marker of task `id`: its place while it lives, its ending once it
/// ended (see [`Marker`]); its existence is the idempotency marker.
pub fn marker_key(keys: &QueueKeys, id: &str) -> String {
    format!("{}m:{id}", keys.prefix())
}

/// A task's marker as stored (for tools and tests that read keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// The task lives: its band and entry.
    Place {
        /// Priority band.
        band: u8,
        /// Stream entry id.
        entry: String,
        /// The submitter's reply stream key, if it gave one.
        reply: Option<String>,
    },
    /// The task ended.
    Ended {
        /// Terminal state (`done`, `failed`, `cancelled`, `expired`).
        state: String,
        /// The attempt that ended it.
        attempt: u64,
        /// When, ms of Redis time.
        at_ms: u64,
        /// The worker involved, if any (empty: none).
        worker: String,
        /// Error kind (`handler`, `worker_lost`, `cancelled`, ...); the
        /// ending's own kind also for a done task.
        kind: String,
        /// The result (done) or the reason.
        payload: Vec<u8>,
    },
}

impl Marker {
    /// Parses a marker's value; `None` for an unreadable one.
    pub fn parse(value: &[u8]) -> Option<Marker> {
        if value.first()?.is_ascii_digit() {
            let text = std::str::from_utf8(value).ok()?;
            let mut words = text.split(' ');
            let band = words.next()?.parse().ok()?;
            let entry = words.next()?.to_string();
            let _retention = words.next()?;
            let reply = words.next().filter(|r| *r != "-").map(str::to_string);
            return Some(Marker::Place { band, entry, reply });
        }
        let nl = value.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&value[..nl]).ok()?;
        let mut fields = header.split('\t');
        let state = fields.next()?.to_string();
        let attempt = fields.next()?.parse().ok()?;
        let at_ms = fields.next()?.parse().ok()?;
        let worker = fields.next()?.to_string();
        let _own_entry = fields.next()?;
        let kind = fields.next()?.to_string();
        Some(Marker::Ended {
            state,
            attempt,
            at_ms,
            worker,
            kind,
            payload: value[nl + 1..].to_vec(),
        })
    }
}

/// The zset of live workers (worker id -> lease expiry in ms).
pub fn live_key(keys: &QueueKeys) -> String {
    format!("{}lv", keys.prefix())
}

/// Loads (or replaces) the v3 library on the server.
///
/// # Errors
/// Connection errors, [`Error::PermissionDenied`].
pub async fn load<C: ConnectionLike + Send>(conn: &mut C) -> Result<(), Error> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY_SOURCE)
        .query_async::<Value>(conn)
        .await?;
    Ok(())
}

/// Makes sure the server (this node) runs this revision of the v3 library
/// or a newer one: one `FCALL_RO rtq3_version` when it does; an older one
/// (or none) is replaced (`FUNCTION LOAD REPLACE`). Clients and workers
/// call it once before they use a stream queue: a function whose
/// arguments changed between revisions would refuse every call of a
/// newer process (INVALID) or, worse, read them differently.
///
/// # Errors
/// Connection errors, [`Error::PermissionDenied`] (the user may not load
/// functions and the server's library is older).
pub async fn ensure_loaded<C: ConnectionLike + Send>(conn: &mut C) -> Result<(), Error> {
    let reply: redis::RedisResult<Value> = redis::cmd("FCALL_RO")
        .arg("rtq3_version")
        .arg(0)
        .query_async(conn)
        .await;
    let revision = match reply {
        Ok(v) => match ReplyItems::new(v, "rtq3_version").and_then(|mut r| {
            let protocol = r.uint()?;
            Ok((protocol, r.uint()?))
        }) {
            Ok((3, revision)) => Some(revision),
            _ => None,
        },
        Err(e) if crate::functions::is_library_missing(&e) => None,
        Err(e) => return Err(e.into()),
    };
    if revision.is_some_and(|r| r >= LIBRARY_REVISION as u64) {
        return Ok(());
    }
    tracing::info!(
        found = ?revision,
        ours = LIBRARY_REVISION,
        "loading the rtq3 functions library (the server has an older one or none)"
    );
    load(conn).await
}

/// FCALLs `name` on queue `keys` with `args`, loading the library once if
/// the server lacks it.
async fn call<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    name: &'static str,
    read_only: bool,
    task: Option<&str>,
    args: Vec<Vec<u8>>,
) -> Result<Value, Error> {
    let mut cmd = redis::cmd(if read_only { "FCALL_RO" } else { "FCALL" });
    cmd.arg(name).arg(1).arg(keys.meta());
    for arg in args {
        cmd.arg(arg);
    }
    let first = cmd.query_async::<Value>(conn).await;
    let value = match first {
        Err(e) if crate::functions::is_library_missing(&e) => {
            load(conn).await?;
            cmd.query_async::<Value>(conn).await
        }
        other => other,
    };
    value.map_err(|e| name_error(e.into(), name, keys.name(), task))
}

fn arg(value: impl ToString) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn items(value: Value, function: &'static str) -> Result<ReplyItems, Error> {
    ReplyItems::new(value, function)
}

/// Makes `keys` a stream queue with `bands` priority bands (1-5) and a
/// depth limit (`0`: none), or updates the depth limit of one.
///
/// # Errors
/// [`Error::InvalidInput`] when the queue exists as a v2 queue or with
/// another band count; [`Error::Redis`] (`WRONGTYPE`) when one of its keys
/// holds a foreign type.
pub async fn create<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    bands: u8,
    max_depth: u64,
) -> Result<(), Error> {
    call(
        conn,
        keys,
        "rtq3_create",
        false,
        None,
        vec![arg(bands), arg(max_depth)],
    )
    .await?;
    Ok(())
}

/// A task to submit.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// Task id (1-128 bytes, no spaces or control characters).
    pub id: String,
    /// Priority band: 0 is served first.
    pub band: u8,
    /// The task's spec (what the handler gets).
    pub spec: Vec<u8>,
    /// The submitter's reply stream key (`rtq:{q}:r:<client>`), or empty.
    pub reply: String,
    /// Deadline in ms of Redis time, `0`: none.
    pub deadline_ms: u64,
    /// Attempts allowed (1-1000).
    pub max_attempts: u32,
    /// How long the ending is kept, ms.
    pub retention_ms: u64,
}

/// What a submit did with one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Queued as this stream entry.
    Added {
        /// The entry id.
        entry: String,
    },
    /// The id exists (queued, running or ended within its retention).
    Duplicate,
    /// The queue is at its depth limit.
    Full,
}

/// Submits `tasks` in one call (at most 1024): one answer per task, in order.
///
/// # Errors
/// [`Error::InvalidInput`] for any invalid task (none is added).
pub async fn submit<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    tasks: &[NewTask],
) -> Result<Vec<Admission>, Error> {
    let refs: Vec<&NewTask> = tasks.iter().collect();
    submit_refs(conn, keys, &refs).await
}

/// [`submit`] of tasks held elsewhere (a batch of waiting callers), without
/// copying them first.
///
/// # Errors
/// As [`submit`].
pub async fn submit_refs<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    tasks: &[&NewTask],
) -> Result<Vec<Admission>, Error> {
    let mut args = vec![arg(tasks.len())];
    for t in tasks {
        args.extend([
            arg(&t.id),
            arg(t.band),
            t.spec.clone(),
            arg(&t.reply),
            arg(t.deadline_ms),
            arg(t.max_attempts),
            arg(t.retention_ms),
        ]);
    }
    let task = (tasks.len() == 1).then(|| tasks[0].id.as_str());
    let reply = call(conn, keys, "rtq3_submit", false, task, args).await?;
    let mut out = Vec::with_capacity(tasks.len());
    let mut reply = items(reply, "rtq3_submit")?;
    for _ in tasks {
        let word = reply.string()?;
        out.push(match word.split_once(' ') {
            Some(("OK", entry)) => Admission::Added {
                entry: entry.to_string(),
            },
            _ if word == "DUP" => Admission::Duplicate,
            _ if word == "FULL" => Admission::Full,
            _ => return Err(reply.unexpected(&word)),
        });
    }
    Ok(out)
}

/// The fence of one attempt: where its entry is and how often the entry
/// was delivered when this attempt got it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Held {
    /// Priority band.
    pub band: u8,
    /// Stream entry id.
    pub entry: String,
    /// The entry's delivery count for this attempt.
    pub deliveries: u64,
    /// Attempts used before this entry.
    pub a0: u64,
}

impl Held {
    /// The attempt number (1 = the first run).
    pub fn attempt(&self) -> u64 {
        self.a0 + self.deliveries
    }
}

/// A task a worker got (a new entry or one taken over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The attempt's fence.
    pub held: Held,
    /// Task id.
    pub id: String,
    /// The spec.
    pub spec: Vec<u8>,
    /// The submitter's reply stream key, or empty.
    pub reply: String,
    /// Deadline in ms of Redis time, `0`: none.
    pub deadline_ms: u64,
    /// Attempts allowed.
    pub max_attempts: u64,
    /// Ending retention, ms.
    pub retention_ms: u64,
}

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn number(fields: &[(String, Vec<u8>)], name: &str) -> Result<u64, Error> {
    field(fields, name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("stream entry without a numeric {name}")))
}

fn text(fields: &[(String, Vec<u8>)], name: &str) -> Result<String, Error> {
    field(fields, name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .ok_or_else(|| Error::Protocol(format!("stream entry without {name}")))
}

/// Reads up to `count` new entries of band `band` as worker `worker`
/// (`XREADGROUP`, blocking up to `block_ms` when given); each is delivery
/// 1 of its entry. An entry deleted before it was read is skipped, and so
/// is one that is not a task (housekeeping drops it later).
///
/// # Errors
/// Connection errors; [`Error::Protocol`] for an entry without its fields.
pub async fn read_new<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    band: u8,
    count: usize,
    block_ms: Option<u64>,
) -> Result<Vec<Delivery>, Error> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(worker)
        .arg("COUNT")
        .arg(count);
    if let Some(ms) = block_ms {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("STREAMS").arg(band_key(keys, band)).arg(">");
    let reply: Value = cmd.query_async(conn).await?;
    parse_read(reply, &[(band, band_key(keys, band))])
}

/// The deliveries of an `XREADGROUP ... >` reply (RESP2 or RESP3) over the
/// streams `bands` (each band with its stream key); each is delivery 1 of
/// its entry. Entries deleted before the read are skipped, and so are
/// entries that are not tasks (XADD by hand: left in the reader's pending
/// list, where housekeeping drops them).
///
/// # Errors
/// [`Error::Protocol`] for a reply naming a stream not asked for.
pub fn parse_read(reply: Value, bands: &[(u8, String)]) -> Result<Vec<Delivery>, Error> {
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Ok(out), // nil: nothing new
    };
    for stream in streams {
        let Value::Array(mut pair) = stream else {
            continue;
        };
        let (Some(Value::Array(entries)), Some(key)) = (pair.pop(), pair.pop()) else {
            continue;
        };
        let key = value_to_string(&key);
        let band = bands
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(b, _)| *b)
            .ok_or_else(|| Error::Protocol(format!("XREADGROUP replied a foreign stream {key}")))?;
        out.extend(
            entries
                .into_iter()
                .filter_map(|e| entry_delivery(band, e, 1)),
        );
    }
    Ok(out)
}

/// The delivery `deliveries` of one stream entry as `XREADGROUP` and
/// `XRANGE` reply it (`[id, [field, value, ...]]`); `None` for an entry
/// deleted before the read (nil fields) or one that is not a task
/// (logged).
pub fn entry_delivery(band: u8, entry: Value, deliveries: u64) -> Option<Delivery> {
    let Value::Array(mut parts) = entry else {
        return None;
    };
    let (Some(Value::Array(raw)), Some(id)) = (parts.pop(), parts.pop()) else {
        return None; // deleted before the read
    };
    let fields: Vec<(String, Vec<u8>)> = raw
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((value_to_string(k), value_to_bytes(v))),
            _ => None,
        })
        .collect();
    let id = value_to_string(&id);
    match delivery(band, id.clone(), deliveries, &fields) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(band, entry = %id, error = %e, "skipping a stream entry that is not a task");
            None
        }
    }
}

fn delivery(
    band: u8,
    entry: String,
    deliveries: u64,
    fields: &[(String, Vec<u8>)],
) -> Result<Delivery, Error> {
    Ok(Delivery {
        held: Held {
            band,
            entry,
            deliveries,
            a0: number(fields, "a0")?,
        },
        id: text(fields, "t")?,
        spec: field(fields, "s").unwrap_or_default().to_vec(),
        reply: text(fields, "r")?,
        deadline_ms: number(fields, "d")?,
        max_attempts: number(fields, "x")?,
        retention_ms: number(fields, "ret")?,
    })
}

/// How an attempt ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndState {
    /// Finished with this JSON result.
    Done(String),
    /// Failed for good with this reason.
    Failed(String),
    /// Failed; another attempt if any remain (else failed).
    Retry(String),
    /// Given back unstarted: queued again, no attempt used.
    HandBack(String),
    /// Refused or stopped: its deadline passed.
    Expired(String),
}

impl EndState {
    fn wire(&self) -> (&'static str, &str) {
        match self {
            EndState::Done(r) => ("done", r),
            EndState::Failed(r) => ("failed", r),
            EndState::Retry(r) => ("retry", r),
            EndState::HandBack(r) => ("handback", r),
            EndState::Expired(r) => ("expired", r),
        }
    }
}

/// One ending in a [`complete`] call.
#[derive(Clone, Debug)]
pub struct Ending {
    /// The attempt's fence.
    pub held: Held,
    /// Task id.
    pub id: String,
    /// How it ended.
    pub state: EndState,
    /// The chunks the attempt's output must hold for the ending to be
    /// written (`None`: not checked): sent with the attempt's last chunk
    /// write in one pipeline ([`write_then_complete`]), it keeps the
    /// ending from landing when that write did not.
    pub output: Option<u64>,
}

/// What [`complete`] did with one ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completed {
    /// Written.
    Ok,
    /// This attempt's ending was written by an earlier call (a retry
    /// after a lost reply).
    Replay,
    /// Not the current attempt any more (taken over, cancelled, restarted).
    Lost,
    /// The attempt's output holds this many chunks, not
    /// [`Ending::output`]: nothing was written for this ending.
    Order(u64),
}

/// Ends attempts of worker `worker` (at most 1024 per call).
///
/// # Errors
/// [`Error::InvalidInput`] for any invalid ending (none is written).
pub async fn complete<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    endings: &[Ending],
) -> Result<Vec<Completed>, Error> {
    let task = (endings.len() == 1).then(|| endings[0].id.as_str());
    let reply = call(
        conn,
        keys,
        "rtq3_complete",
        false,
        task,
        complete_args(worker, endings),
    )
    .await?;
    decode_complete(reply, endings.len())
}

fn complete_args(worker: &str, endings: &[Ending]) -> Vec<Vec<u8>> {
    let mut args = vec![arg(worker), arg(endings.len())];
    for e in endings {
        let (state, payload) = e.state.wire();
        args.extend([
            arg(e.held.band),
            arg(&e.held.entry),
            arg(&e.id),
            arg(e.held.deliveries),
            arg(e.held.a0),
            arg(state),
            payload.as_bytes().to_vec(),
            e.output.map_or_else(|| b"-".to_vec(), arg),
        ]);
    }
    args
}

fn decode_complete(reply: Value, endings: usize) -> Result<Vec<Completed>, Error> {
    let mut reply = items(reply, "rtq3_complete")?;
    (0..endings)
        .map(|_| {
            let word = reply.string()?;
            Ok(match word.split_once(' ') {
                None if word == "OK" => Completed::Ok,
                None if word == "REPLAY" => Completed::Replay,
                None if word == "LOST" => Completed::Lost,
                Some(("ORDER", n)) => Completed::Order(
                    n.parse()
                        .map_err(|_| Error::Protocol(format!("rtq3_complete replied {word:?}")))?,
                ),
                _ => return Err(reply.unexpected(&word)),
            })
        })
        .collect()
}

/// An attempt's last chunks and its ending (several attempts' of one
/// worker) in one round trip: `rtq3_write` of `writes`, then
/// `rtq3_complete` of `endings`, in one `MULTI`/`EXEC` (Redis runs them in
/// that order, and readers blocked on the reply stream see both). Each ending should carry [`Ending::output`] (the
/// count its attempt holds once its write applied): an ending whose write
/// did not apply (ORDER, LOST, TOO_LARGE, a call that failed) is then
/// answered [`Completed::Order`] or [`Completed::Lost`] and writes nothing.
///
/// # Errors
/// As [`write`] and [`complete`]; a refused write call (nothing written)
/// leaves the completes to run alone (their `output` checks hold).
pub async fn write_then_complete<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    writes: &[ChunkWrite],
    endings: &[Ending],
) -> Result<(Vec<Written>, Vec<Completed>), Error> {
    if writes.is_empty() {
        return Ok((Vec::new(), complete(conn, keys, worker, endings).await?));
    }
    let fcall = |name: &str, args: Vec<Vec<u8>>| {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(name).arg(1).arg(keys.meta());
        for a in args {
            cmd.arg(a);
        }
        cmd
    };
    // One transaction, not only one round trip: Redis serves a client
    // blocked on the reply stream after EXEC, so the chunks' event and the
    // final one reach it together (a plain pipeline woke it after the
    // write, and its next read cost a round trip more).
    let mut pipe = redis::pipe();
    pipe.atomic()
        .add_command(fcall("rtq3_write", write_args(worker, writes)))
        .add_command(fcall("rtq3_complete", complete_args(worker, endings)));
    pipe.ignore_errors();
    let mut loaded = false;
    loop {
        let values: Vec<Value> = pipe.query_async(conn).await?;
        let mut values = values.into_iter();
        let (written, completed) = (
            values.next().unwrap_or(Value::Nil),
            values.next().unwrap_or(Value::Nil),
        );
        let failed = |v: Value, name: &'static str| match v {
            Value::ServerError(e) => Err(name_error(
                redis::RedisError::from(e).into(),
                name,
                keys.name(),
                None,
            )),
            v => Ok(v),
        };
        let written = failed(written, "rtq3_write");
        if let Err(Error::Redis(e)) = &written {
            if !loaded && crate::functions::is_library_missing(e) {
                loaded = true;
                load(conn).await?;
                continue;
            }
        }
        let written = decode_write(written?, writes.len())?;
        let completed = decode_complete(failed(completed, "rtq3_complete")?, endings.len())?;
        return Ok((written, completed));
    }
}

/// Renews worker `worker`'s liveness (for `lease_ms`) and the lease of
/// each attempt it holds; `false` for an attempt that is not its own any
/// more (the worker stops it).
///
/// # Errors
/// [`Error::InvalidInput`] for invalid arguments.
pub async fn beat<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    lease_ms: u64,
    held: &[Held],
) -> Result<Vec<bool>, Error> {
    let mut args = vec![arg(worker), arg(lease_ms), arg(held.len())];
    for h in held {
        args.extend([arg(h.band), arg(&h.entry), arg(h.deliveries)]);
    }
    let reply = call(conn, keys, "rtq3_beat", false, None, args).await?;
    let mut reply = items(reply, "rtq3_beat")?;
    held.iter()
        .map(|_| {
            let word = reply.string()?;
            match word.as_str() {
                "OK" => Ok(true),
                "LOST" => Ok(false),
                _ => Err(reply.unexpected(&word)),
            }
        })
        .collect()
}

/// A worker (re)starting under `worker`: the attempts the id still holds
/// are void and queued again (or failed when their attempts are used up).
/// Returns how many it held.
///
/// # Errors
/// [`Error::InvalidInput`] for an invalid id.
pub async fn join<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
) -> Result<u64, Error> {
    let reply = call(conn, keys, "rtq3_join", false, None, vec![arg(worker)]).await?;
    match reply {
        Value::Int(n) => u64::try_from(n)
            .map_err(|_| Error::Protocol(format!("rtq3_join replied a negative count {n}"))),
        other => Err(Error::Protocol(format!(
            "rtq3_join replied {other:?}, expected a count"
        ))),
    }
}

/// Housekeeping by worker `worker` with `free` free slots: entries idle
/// past `lease_ms` come to it (each a new attempt), those past their
/// attempts or deadline end, and queued entries past their deadline end.
/// Returns how many ended and what it took.
///
/// # Errors
/// [`Error::InvalidInput`] for invalid arguments.
pub async fn takeover<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    lease_ms: u64,
    free: usize,
) -> Result<(u64, Vec<Delivery>), Error> {
    let args = vec![arg(worker), arg(lease_ms), arg(free)];
    let reply = call(conn, keys, "rtq3_takeover", false, None, args).await?;
    let mut reply = items(reply, "rtq3_takeover")?;
    let ended = reply.uint()?;
    let rest = reply.rest_bytes();
    let mut out = Vec::new();
    for row in rest.chunks(10) {
        let [band, entry, deliveries, id, spec, reply, deadline, max, a0, ret] = row else {
            return Err(Error::Protocol(
                "rtq3_takeover replied a short delivery".into(),
            ));
        };
        let s = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let n = |v: &[u8]| {
            s(v).parse::<u64>()
                .map_err(|_| Error::Protocol("rtq3_takeover replied a bad number".into()))
        };
        let fields = vec![
            ("t".to_string(), id.clone()),
            ("s".to_string(), spec.clone()),
            ("r".to_string(), reply.clone()),
            ("d".to_string(), deadline.clone()),
            ("x".to_string(), max.clone()),
            ("a0".to_string(), a0.clone()),
            ("ret".to_string(), ret.clone()),
        ];
        let band = u8::try_from(n(band)?)
            .map_err(|_| Error::Protocol("rtq3_takeover replied a bad band".into()))?;
        out.push(delivery(band, s(entry), n(deliveries)?, &fields)?);
    }
    Ok((ended, out))
}

/// The output list of attempt `attempt` of task `id`.
pub fn output_key(keys: &QueueKeys, id: &str, attempt: u64) -> String {
    format!("{}o:{id}:{attempt}", keys.prefix())
}

/// Chunks of one running attempt for [`write`].
#[derive(Clone, Debug)]
pub struct ChunkWrite {
    /// The attempt's fence.
    pub held: Held,
    /// Task id.
    pub id: String,
    /// Chunks this attempt wrote before.
    pub seq0: u64,
    /// The chunks (1-512, each at most 1 MiB).
    pub chunks: Vec<Vec<u8>>,
}

/// What [`write`] did with one attempt's chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Appended; the attempt has this many chunks stored.
    Ok(u64),
    /// `seq0` was not the count stored (this many): resend from there.
    Order(u64),
    /// Not the current attempt any more: stop it.
    Lost,
    /// Past the output cap: end the task as failed.
    TooLarge,
}

/// Writes output chunks of worker `worker`'s running attempts (at most
/// 1024 attempts per call): stored per attempt and sent to each task's
/// reply stream.
///
/// # Errors
/// [`Error::InvalidInput`] for any invalid write (none is written).
pub async fn write<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    writes: &[ChunkWrite],
) -> Result<Vec<Written>, Error> {
    let task = (writes.len() == 1).then(|| writes[0].id.as_str());
    let reply = call(
        conn,
        keys,
        "rtq3_write",
        false,
        task,
        write_args(worker, writes),
    )
    .await?;
    decode_write(reply, writes.len())
}

fn write_args(worker: &str, writes: &[ChunkWrite]) -> Vec<Vec<u8>> {
    let mut args = vec![arg(worker), arg(writes.len())];
    for w in writes {
        args.extend([
            arg(w.held.band),
            arg(&w.held.entry),
            arg(&w.id),
            arg(w.held.deliveries),
            arg(w.held.a0),
            arg(w.seq0),
            arg(w.chunks.len()),
        ]);
        args.extend(w.chunks.iter().cloned());
    }
    args
}

fn decode_write(reply: Value, writes: usize) -> Result<Vec<Written>, Error> {
    let mut reply = items(reply, "rtq3_write")?;
    (0..writes)
        .map(|_| {
            let Value::Array(pair) = reply.next_raw()? else {
                return Err(Error::Protocol(
                    "rtq3_write replied a non-array item".into(),
                ));
            };
            let mut pair = ReplyItems::new(Value::Array(pair), "rtq3_write")?;
            let word = pair.string()?;
            let n = pair.uint()?;
            Ok(match word.as_str() {
                "OK" => Written::Ok(n),
                "ORDER" => Written::Order(n),
                "LOST" => Written::Lost,
                "TOO_LARGE" => Written::TooLarge,
                _ => return Err(pair.unexpected(&word)),
            })
        })
        .collect()
}

/// What [`cancel`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// Ended as cancelled; `Some(worker)`: it was running there and the
    /// worker was sent a stop order.
    Ok(Option<String>),
    /// No such task (or past its retention).
    NotFound,
    /// It had already ended.
    Ended(TaskState),
}

/// Cancels task `id` with `reason`.
///
/// # Errors
/// [`Error::InvalidInput`] for invalid arguments.
pub async fn cancel<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    id: &str,
    reason: &str,
) -> Result<Cancelled, Error> {
    let reply = call(
        conn,
        keys,
        "rtq3_cancel",
        false,
        Some(id),
        vec![arg(id), arg(reason)],
    )
    .await?;
    let word = value_to_string(&reply);
    Ok(match word.split_once(' ') {
        None if word == "OK" => Cancelled::Ok(None),
        None if word == "NOT_FOUND" => Cancelled::NotFound,
        Some(("OK", worker)) => Cancelled::Ok(Some(worker.to_string())),
        Some(("ENDED", state)) => Cancelled::Ended(TaskState::parse(state).ok_or_else(|| {
            Error::Protocol(format!("rtq3_cancel replied an unknown state {state:?}"))
        })?),
        _ => return Err(Error::Protocol(format!("rtq3_cancel replied {word:?}"))),
    })
}

/// What [`expire`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expired {
    /// Ended as expired; `Some(worker)`: it was running there and the
    /// worker was sent a stop order.
    Ok(Option<String>),
    /// Its deadline is this far ahead on Redis's clock.
    NotDue(Duration),
    /// The task has no deadline.
    NoDeadline,
    /// No such task (or past its retention).
    NotFound,
    /// It had already ended.
    Ended(TaskState),
}

/// Ends task `id` as expired if its deadline passed on Redis's clock
/// (`rtq3_expire`, library revision 2).
///
/// # Errors
/// [`Error::InvalidInput`] for an invalid id.
pub async fn expire<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    id: &str,
) -> Result<Expired, Error> {
    let reply = call(conn, keys, "rtq3_expire", false, Some(id), vec![arg(id)]).await?;
    let word = value_to_string(&reply);
    let bad = || Error::Protocol(format!("rtq3_expire replied {word:?}"));
    Ok(match word.split_once(' ') {
        None if word == "OK" => Expired::Ok(None),
        None if word == "NOT_FOUND" => Expired::NotFound,
        None if word == "NO_DEADLINE" => Expired::NoDeadline,
        Some(("OK", worker)) => Expired::Ok(Some(worker.to_string())),
        Some(("NOT_DUE", ms)) => {
            Expired::NotDue(Duration::from_millis(ms.parse().map_err(|_| bad())?))
        }
        Some(("ENDED", state)) => Expired::Ended(TaskState::parse(state).ok_or_else(bad)?),
        _ => return Err(bad()),
    })
}

/// Where a task of a stream queue is, and why it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// It ended.
    Ended {
        /// Terminal state.
        state: TaskState,
        /// The attempt that ended it (0: never ran).
        attempt: u64,
        /// When, ms of Redis time.
        at_ms: u64,
        /// Error kind (`handler`, `worker_lost`, `timeout_running`, ...); empty when done.
        kind: String,
        /// Reason; empty when done.
        message: String,
        /// The worker involved, if any.
        worker: String,
    },
    /// A worker holds it.
    Running {
        /// The worker.
        worker: String,
        /// The attempt.
        attempt: u64,
        /// Since the worker's last lease renewal, ms.
        idle_ms: u64,
        /// The worker's own liveness left, ms; `None`: it stopped beating.
        lease_left_ms: Option<u64>,
    },
    /// It waits in its band.
    Queued {
        /// Priority band.
        band: u8,
        /// Entries served before it (capped at 100).
        ahead: u64,
        /// Workers alive on the queue (0: nobody serves it).
        live_workers: u64,
        /// Attempts used before (the next run is attempt this + 1).
        attempts_used: u64,
    },
    /// Never submitted, or past its retention.
    Unknown,
}

/// Reads the status of task `id`.
///
/// # Errors
/// [`Error::InvalidInput`] for an invalid id.
pub async fn status<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    id: &str,
) -> Result<Status, Error> {
    let reply = call(conn, keys, "rtq3_status", true, Some(id), vec![arg(id)]).await?;
    let mut r = items(reply, "rtq3_status")?;
    let word = r.string()?;
    Ok(match word.as_str() {
        "ended" => {
            let st = r.string()?;
            Status::Ended {
                state: TaskState::parse(&st).ok_or_else(|| r.unexpected(&st))?,
                attempt: r.uint()?,
                at_ms: r.uint()?,
                kind: r.string()?,
                message: r.string()?,
                worker: r.string()?,
            }
        }
        "running" => Status::Running {
            worker: r.string()?,
            attempt: r.uint()?,
            idle_ms: r.uint()?,
            lease_left_ms: u64::try_from(r.int()?).ok(),
        },
        "queued" => Status::Queued {
            band: {
                let band = r.uint()?;
                u8::try_from(band)
                    .map_err(|_| Error::Protocol(format!("rtq3_status replied a band of {band}")))?
            },
            ahead: r.uint()?,
            live_workers: r.uint()?,
            attempts_used: r.uint()?,
        },
        "unknown" => Status::Unknown,
        _ => return Err(r.unexpected(&word)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_revision_matches_stream_lua() {
        assert!(LIBRARY_SOURCE.starts_with("#!lua name=rtq3\n"));
        assert!(LIBRARY_SOURCE.contains("redis.register_function('rtq3_write', write)"));
        assert!(LIBRARY_SOURCE.contains(&format!("local REVISION = {LIBRARY_REVISION}\n")));
        assert!(LIBRARY_SOURCE.contains(&format!("local MAX_BANDS = {MAX_BANDS}\n")));
        assert!(LIBRARY_SOURCE.contains(&format!("local GROUP = '{GROUP}'\n")));
    }

    #[test]
    fn an_attempt_is_the_attempts_before_plus_the_deliveries() {
        let held = Held {
            band: 0,
            entry: "1-0".into(),
            deliveries: 2,
            a0: 3,
        };
        assert_eq!(held.attempt(), 5);
    }
}
